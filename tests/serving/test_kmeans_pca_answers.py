"""The model server answers the built-in KMeans and PCA models (response formats ``kmeans`` / ``pca``) in
SageMaker's shapes, for every Accept: JSON ``{"predictions": [{"closest_cluster", "distance_to_cluster"}]}``
/ ``{"projections": [{"projection": [...]}]}``, JSON Lines, CSV, npy and RecordIO-protobuf ``Record``s."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import requests
from serving_helpers import Server

from common import recordio
from common.onnx_export import kmeans_to_onnx, pca_to_onnx, save, write_signature
from serving.contract import Signature
from serving.handlers.formatter import ResponseFormatter

RECORDIO = "application/x-recordio-protobuf"
CENTERS = np.array([[0.0, 0.0, 0.0], [5.0, 5.0, 0.0], [-4.0, 2.0, 3.0]])
MEAN = np.array([1.0, -2.0, 0.5])
COMPONENTS = np.linalg.qr(np.random.default_rng(4).normal(size=(3, 3)))[0][:, :2]
X = np.random.default_rng(5).normal(scale=4.0, size=(7, 3)).astype(np.float32)


def _nearest() -> tuple[np.ndarray, np.ndarray]:
    d = np.sqrt(((X[:, None, :].astype(np.float64) - CENTERS[None]) ** 2).sum(axis=2))
    return d.argmin(axis=1).astype(float), d.min(axis=1)


@pytest.fixture(scope="module")
def kmeans(serve: Callable[..., Server], tmp_path_factory: pytest.TempPathFactory) -> Server:
    out = tmp_path_factory.mktemp("kmeans")
    save(kmeans_to_onnx(CENTERS), out)
    write_signature(out, framework="kmeans", task="clustering", n_features=3, response_format="kmeans")
    return serve("--model-dir", str(out))


@pytest.fixture(scope="module")
def pca(serve: Callable[..., Server], tmp_path_factory: pytest.TempPathFactory) -> Server:
    out = tmp_path_factory.mktemp("pca")
    save(pca_to_onnx(MEAN, COMPONENTS), out)
    write_signature(
        out, framework="pca", task="dimensionality_reduction", n_features=3, response_format="pca"
    )
    return serve("--model-dir", str(out))


def post(server: Server, body: bytes, content_type: str, accept: str | None = None) -> requests.Response:
    headers = {"Content-Type": content_type} | ({"Accept": accept} if accept else {})
    answer = requests.post(server.url + "/invocations", data=body, headers=headers, timeout=10)
    return answer


def csv_body() -> bytes:
    return "".join(",".join(f"{v:.7g}" for v in row) + "\n" for row in X.tolist()).encode()


def labels(body: bytes) -> list[dict[str, list[float]]]:
    return [
        {key: list(value.float32_tensor.values) for key, value in recordio.parse_record(p).label.items()}
        for p in recordio.split_records(body)
    ]


def test_kmeans_answers_sagemakers_shapes(kmeans: Server) -> None:
    clusters, distances = _nearest()
    answer = post(kmeans, csv_body(), "text/csv")  # JSON by default
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/json", answer.text
    predictions = answer.json()["predictions"]
    assert [p["closest_cluster"] for p in predictions] == clusters.tolist()
    np.testing.assert_allclose([p["distance_to_cluster"] for p in predictions], distances, rtol=1e-5)
    assert all(set(p) == {"closest_cluster", "distance_to_cluster"} for p in predictions)
    lines = post(kmeans, csv_body(), "text/csv", "application/jsonlines").text.splitlines()
    assert [json.loads(line) for line in lines] == predictions
    rows = np.loadtxt(io.StringIO(post(kmeans, csv_body(), "text/csv", "text/csv").text), delimiter=",")
    np.testing.assert_allclose(rows, np.stack([clusters, distances], axis=1), rtol=1e-5)
    records = labels(post(kmeans, recordio.encode_dense(X), RECORDIO, RECORDIO).content)
    assert [r["closest_cluster"] for r in records] == [[c] for c in clusters.tolist()]
    np.testing.assert_allclose([r["distance_to_cluster"][0] for r in records], distances, rtol=1e-5)
    npy = np.load(io.BytesIO(post(kmeans, csv_body(), "text/csv", "application/x-npy").content))
    np.testing.assert_allclose(npy, np.stack([clusters, distances], axis=1), rtol=1e-5)


def test_pca_answers_sagemakers_shapes(pca: Server) -> None:
    expected = (X.astype(np.float64) - MEAN) @ COMPONENTS
    answer = post(pca, json.dumps({"instances": X.tolist()}).encode(), "application/json")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert list(body) == ["projections"]
    np.testing.assert_allclose([p["projection"] for p in body["projections"]], expected, rtol=1e-5, atol=1e-5)
    lines = post(pca, csv_body(), "text/csv", "application/jsonlines").text.splitlines()
    np.testing.assert_allclose(
        [json.loads(line)["projection"] for line in lines], expected, rtol=1e-5, atol=1e-5
    )
    rows = np.loadtxt(io.StringIO(post(pca, csv_body(), "text/csv", "text/csv").text), delimiter=",")
    np.testing.assert_allclose(rows, expected, rtol=1e-5, atol=1e-5)
    records = labels(post(pca, recordio.encode_dense(X), RECORDIO, RECORDIO).content)
    np.testing.assert_allclose([r["projection"] for r in records], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("which", ["kmeans", "pca"])
def test_wrong_width_is_a_400_naming_it(request: pytest.FixtureRequest, which: str) -> None:
    server: Server = request.getfixturevalue(which)
    answer = post(server, b"1,2\n", "text/csv")
    assert answer.status_code == 400 and "3" in answer.text, answer.text


@pytest.mark.parametrize("which", ["kmeans", "pca"])
@pytest.mark.parametrize("accept", ["application/json", "application/jsonlines", "text/csv", RECORDIO])
def test_a_shared_run_answers_each_request_as_if_alone(tmp_path: Path, which: str, accept: str) -> None:
    """Requests batched into one ONNX run (ResponseFormatter.encode_split) get what each would alone:
    the same records under the same JSON member (PCA's ``projections``)."""
    if which == "kmeans":
        save(kmeans_to_onnx(CENTERS), tmp_path)
        task, names = "clustering", ["closest_cluster", "distance_to_cluster"]
    else:
        save(pca_to_onnx(MEAN, COMPONENTS), tmp_path)
        task, names = "dimensionality_reduction", ["projection"]
    write_signature(tmp_path, framework=which, task=task, n_features=3, response_format=which)
    formatter = ResponseFormatter(Signature.load(tmp_path), names, "application/json")
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    outputs = dict(zip(names, sess.run(names, {"input": X}), strict=True))
    for counts in ([1, 2, 1, 3], [1] * len(X)):  # the second: a record per request, the fast path
        answers = formatter.encode_split(outputs, [accept] * len(counts), counts)
        start = 0
        for count, answer in zip(counts, answers, strict=True):
            alone = formatter.encode({k: v[start : start + count] for k, v in outputs.items()}, accept)
            assert answer == alone
            start += count
        if accept == "application/json":
            key = "projections" if which == "pca" else "predictions"
            first = answers[0]
            assert isinstance(first, bytes) and list(json.loads(first)) == [key]
