"""The SageMaker SDK's other formats on a real model server: ``application/x-recordio-protobuf`` in and out
(linear-learner's predictor default), ``text/libsvm`` in (xgboost's, parity with xgboost's own libsvm
reader and predictor on a model trained with missing values) and ``application/jsonlines`` both ways for
every response format. Models are built here: linear-learner graphs with ``common.onnx_export`` (as the
built-in writes them) and an xgboost booster exported as the built-in exports it."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from serving_helpers import Server

from common import recordio
from serving import codecs, contract
from serving.errors import BadRequestError

N = 4
W = np.array([0.8, -1.2, 0.5, 2.0], dtype=np.float32)
B = np.float32(-0.3)
RECORDIO = "application/x-recordio-protobuf"


def _linear_learner(out: Path, task: str) -> Path:
    from common.onnx_export import linear_to_onnx, save, write_signature

    out.mkdir(parents=True, exist_ok=True)
    if task == "multiclass_classification":
        weights = np.stack([W, -W, W[::-1]], axis=1)
        bias = np.array([0.1, -0.2, 0.0], dtype=np.float32)
        classes: list[int] | None = [0, 1, 2]
    else:
        weights, bias = W, np.array([B], dtype=np.float32)
        classes = [0, 1] if task == "binary_classification" else None
    save(linear_to_onnx(weights, bias, task), out)
    write_signature(
        out,
        framework="linear-learner",
        task=task,
        n_features=N,
        response_format="linear-learner",
        classes=classes,
        threshold=0.5 if task == "binary_classification" else None,
    )
    return out


def _rows(n: int = 6, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, N)).astype(np.float32)


def post(server: Server, body: bytes, content_type: str, accept: str | None = None) -> requests.Response:
    headers = {"Content-Type": content_type}
    if accept:
        headers["Accept"] = accept
    return requests.post(server.url + "/invocations", data=body, headers=headers, timeout=10)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("formats")
    return {
        task: _linear_learner(base / task, task)
        for task in ("binary_classification", "regression", "multiclass_classification")
    }


@pytest.fixture(scope="module")
def ll_binary(serve: Callable[..., Server], models: dict[str, Path]) -> Server:
    return serve("--model-dir", str(models["binary_classification"]))


def _records(body: bytes) -> list[dict[str, list[float]]]:
    """An answer read the way the SDK's RecordDeserializer reads it: Record messages, label map."""
    out = []
    for payload in recordio.split_records(body):
        record = recordio.parse_record(payload)
        assert list(record.features) == []
        out.append({key: list(value.float32_tensor.values) for key, value in record.label.items()})
    return out


# -- application/x-recordio-protobuf ------------------------------------------------------------
def test_recordio_dense_request_and_answer_carry_the_models_scores(ll_binary: Server) -> None:
    X = _rows()
    p1 = 1 / (1 + np.exp(-(X.astype(np.float64) @ W + B)))
    for array in (X, X.astype(np.float64)):  # the SDK writes Float32Tensor or Float64Tensor by dtype
        answer = post(ll_binary, recordio.encode_dense(array), RECORDIO, RECORDIO)
        assert answer.status_code == 200, answer.text
        assert answer.headers["Content-Type"] == RECORDIO
        records = _records(answer.content)
        np.testing.assert_allclose([r["score"][0] for r in records], p1, rtol=1e-5)
        assert [r["predicted_label"] for r in records] == [[float(p >= 0.5)] for p in p1]
    # the same scores as the JSON answer (linear-learner's default)
    as_json = post(ll_binary, recordio.encode_dense(X), RECORDIO).json()["predictions"]
    assert [
        {"score": [np.float32(r["score"])], "predicted_label": [r["predicted_label"]]} for r in as_json
    ] == [{"score": r["score"], "predicted_label": r["predicted_label"]} for r in records]


def test_recordio_sparse_request_equals_the_dense_one(ll_binary: Server) -> None:
    X = _rows()
    X[X < 0.2] = 0.0
    sparse = post(ll_binary, recordio.encode_sparse(sp.csr_matrix(X)), RECORDIO, "application/json")
    dense = post(ll_binary, recordio.encode_dense(X), RECORDIO, "application/json")
    assert sparse.status_code == dense.status_code == 200
    assert sparse.json() == dense.json()


@pytest.mark.parametrize("task", ["regression", "multiclass_classification"])
def test_recordio_answers_for_regressors_and_multiclass(
    serve: Callable[..., Server], models: dict[str, Path], task: str
) -> None:
    server = serve("--model-dir", str(models[task]))
    X = _rows()
    answer = post(server, recordio.encode_dense(X), RECORDIO, RECORDIO)
    assert answer.status_code == 200, answer.text
    records = _records(answer.content)
    as_json = post(server, recordio.encode_dense(X), RECORDIO, "application/json").json()["predictions"]
    assert len(records) == len(as_json) == len(X)
    if task == "regression":
        assert all(set(r) == {"score"} for r in records)
        np.testing.assert_allclose([r["score"][0] for r in records], X @ W + B, rtol=1e-5, atol=1e-6)
    else:  # the probability vector and the class, as in the JSON answer
        for record, expected in zip(records, as_json, strict=True):
            np.testing.assert_allclose(record["score"], expected["score"], rtol=1e-6)
            assert len(record["score"]) == 3
            assert record["predicted_label"] == [float(expected["predicted_label"])]
            assert expected["predicted_label"] == int(np.argmax(record["score"]))


TRUNCATED = recordio.encode_dense(_rows(2))[:-10]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (TRUNCATED, 400, "malformed RecordIO-protobuf body: record 1: truncated payload"),
        (b"garbage!" * 3, 400, "malformed RecordIO-protobuf body: record 0: bad magic"),
        (recordio.frame(b"\xff\xff"), 400, "record 0: not an aialgs.data.Record protobuf"),
        (recordio.encode_dense(_rows(2)[:, :3]), 400, "record 0: 3 features, the model takes 4"),
        (recordio.encode_sparse(sp.csr_matrix(np.ones((1, 6), dtype=np.float32))), 400, "6 features"),
        (b"", 400, "empty RecordIO-protobuf body"),
    ],
)
def test_bad_recordio_gets_a_400_naming_the_fault(
    ll_binary: Server, body: bytes, status: int, message: str
) -> None:
    answer = post(ll_binary, body, RECORDIO, RECORDIO)
    assert answer.status_code == status
    assert answer.headers["Content-Type"] == "application/json"
    assert message in answer.json()["error"]
    assert post(ll_binary, recordio.encode_dense(_rows(1)), RECORDIO, RECORDIO).status_code == 200


def test_recordio_answers_only_where_the_format_names_its_results(
    serve: Callable[..., Server], binary_model: Path
) -> None:
    server = serve("--model-dir", str(binary_model))  # response_format "default"
    request = recordio.encode_dense(_rows(2))
    assert post(server, request, RECORDIO, "application/json").status_code == 200  # decoded: yes
    refused = post(server, request, RECORDIO, RECORDIO)
    assert refused.status_code == 406
    assert "application/x-recordio-protobuf" in refused.json()["error"]


# -- text/libsvm ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def xgb_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A binary xgboost model trained on data with missing values (NaN), exported like the built-in."""
    import xgboost as xgb

    from common.onnx_export import save, write_signature, xgboost_to_onnx

    rng = np.random.default_rng(11)
    X = rng.normal(size=(600, 6)).astype(np.float32)
    y = ((X[:, 0] > 0) ^ (X[:, 2] > 0.5)).astype(np.float32)
    X[rng.random(X.shape) < 0.3] = np.nan  # missing values take each split's default direction
    y[np.isnan(X[:, 0])] = 1.0  # ...and matter: a missing feature 0 means class 1
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 4, "eta": 0.5, "nthread": 1},
        xgb.DMatrix(X, label=y, missing=np.nan),
        num_boost_round=12,
    )
    out = tmp_path_factory.mktemp("xgb")
    save(xgboost_to_onnx(booster, 6, "binary:logistic"), out)
    write_signature(
        out,
        framework="xgboost",
        task="binary_classification",
        n_features=6,
        response_format="xgboost",
        classes=[0, 1],
        threshold=0.5,
    )
    return out, booster


LIBSVM_BODY = (
    b"1 0:0.7 2:1.1 5:-0.2\n"  # features 1, 3, 4 missing
    b"0 1:-0.3 2:0.1 3:0.9 4:1.5\n"  # feature 0 missing
    b"0 0:-1.2 1:0.4 2:0.6 3:-0.1 4:0.0 5:2.2\n"  # complete; 4:0.0 is a present zero, not missing
    b"1\n"  # every feature missing
    b"1 3:0.25 # a comment\n"
    b"0 5:1.0\n"
)


def test_libsvm_predictions_equal_xgboosts_own_on_libsvm_input(
    serve: Callable[..., Server], xgb_model: tuple[Path, Any], tmp_path: Path
) -> None:
    import xgboost as xgb

    model_dir, booster = xgb_model
    path = tmp_path / "request.libsvm"
    path.write_bytes(LIBSVM_BODY)
    with warnings.catch_warnings():
        # xgboost 3.1+ deprecates its text-file reader, which is the reference here
        warnings.simplefilter("ignore", UserWarning)
        expected = booster.predict(xgb.DMatrix(f"{path}?format=libsvm"))
    server = serve("--model-dir", str(model_dir))
    answer = post(server, LIBSVM_BODY, "text/libsvm")
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"] == "text/csv"  # xgboost's default answer
    got = np.array([float(line) for line in answer.text.splitlines()])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # and as the dense CSV request with empty (missing) fields, which the server already took
    dense = codecs.decode_libsvm(LIBSVM_BODY, width=6)
    csv = b"\n".join(b",".join(b"" if np.isnan(v) else repr(float(v)).encode() for v in row) for row in dense)
    assert post(server, csv, "text/csv").text == answer.text
    # the missing values matter to this model: zeros instead of NaN give other answers
    zeros = np.nan_to_num(dense)
    assert not np.allclose(booster.predict(xgb.DMatrix(zeros)), expected, atol=1e-3)
    # the bad inputs of the format, named
    for body, message in (
        (b"1 0:1 x:2\n", "libsvm line 1: 'x:2' is not index:value"),
        (b"1 0:1\n0 -1:2\n", "libsvm line 2: '-1:2' is not index:value"),
        (b"1 0:1 2:abc\n", "libsvm line 1: '2:abc' is not index:value"),
        (b"1 0:1 7\n", "libsvm line 1: '7' is not index:value"),
        (b"1 0:1 6:0.5\n", "libsvm line 1: feature index 6 is beyond the model's 6 features"),
        (b"\n\n", "empty libsvm body"),
    ):
        refused = post(server, body, "text/libsvm")
        assert refused.status_code == 400, body
        assert message in refused.json()["error"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"1 0:1 2:3\n0 1:2\n", [[1, np.nan, 3], [np.nan, 2, np.nan]]),
        (b"0 2:1\n", [[np.nan, np.nan, 1]]),
        (b"\n1 0:0 # c\n\n", [[0, np.nan, np.nan]]),
        (b"1:0.5 qid:3 1:0.25\n", [[np.nan, 0.25, np.nan]]),  # label:weight and qid, as xgboost reads them
    ],
)
def test_libsvm_decoder_fills_missing_with_nan(body: bytes, expected: list[list[float]]) -> None:
    np.testing.assert_array_equal(codecs.decode(body, contract.LIBSVM, width=3), np.array(expected))


def test_libsvm_without_a_model_width_is_as_wide_as_its_largest_index() -> None:
    assert codecs.decode_libsvm(b"1 4:1\n0 1:1\n").shape == (2, 5)
    with pytest.raises(BadRequestError, match="names no features"):
        codecs.decode_libsvm(b"1\n0\n")
    with pytest.raises(BadRequestError, match="feature index 99999999999 is beyond the 16,777,216 features"):
        codecs.decode_libsvm(b"1 99999999999:1\n")


# -- application/jsonlines, both ways, every response format -------------------------------------
@pytest.mark.parametrize("kind", ["default", "xgboost", "linear-learner"])
def test_jsonlines_both_ways_for_every_response_format(
    serve: Callable[..., Server],
    kind: str,
    binary_model: Path,
    xgb_model: tuple[Path, Any],
    models: dict[str, Path],
) -> None:
    model_dir, width = {
        "default": (binary_model, 4),
        "xgboost": (xgb_model[0], 6),
        "linear-learner": (models["binary_classification"], 4),
    }[kind]
    server = serve("--model-dir", str(model_dir))
    X = np.random.default_rng(5).normal(size=(5, width)).round(3)
    expected = post(
        server, json.dumps({"instances": X.tolist()}).encode(), "application/json", "application/json"
    )
    assert expected.status_code == 200
    predictions = expected.json()["predictions"]
    requests_lines = [
        b"\n".join(json.dumps(row).encode() for row in X.tolist()) + b"\n",
        b"\n".join(json.dumps({"features": row}).encode() for row in X.tolist()),
    ]
    for body in requests_lines:
        answer = post(server, body, "application/jsonlines", "application/jsonlines")
        assert answer.status_code == 200, answer.text
        assert answer.headers["Content-Type"] == "application/jsonlines"
        assert answer.text.endswith("\n")
        assert [json.loads(line) for line in answer.text.splitlines()] == predictions
        # JSON Lines in, the format's default out; JSON in, JSON Lines out
        assert (
            post(server, body, "application/jsonlines", "application/json").json()["predictions"]
            == predictions
        )
    lines = post(server, json.dumps(X.tolist()).encode(), "application/json", "application/jsonlines").text
    assert [json.loads(line) for line in lines.splitlines()] == predictions


@settings(max_examples=80, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 8), st.integers(1, 7)),
        elements=st.one_of(st.just(np.nan), st.floats(-1e6, 1e6, allow_nan=False, width=32)),
    )
)
def test_libsvm_round_trip_missing_is_nan(table: np.ndarray) -> None:
    lines = [
        "0 " + " ".join(f"{j}:{float(v)!r}" for j, v in enumerate(row) if not np.isnan(v)) for row in table
    ]
    got = codecs.decode_libsvm("\n".join(lines).encode(), width=table.shape[1])
    np.testing.assert_array_equal(got, table)
