"""The data plane in-process: response formats of docs/contracts.md, input validation, user hooks."""

from __future__ import annotations

import io
import json
import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import pytest
import scipy.sparse

from serving.dataplane import DataPlane
from serving.errors import (
    BadRequestError,
    ModelLoadError,
    ModelNotReadyError,
    NotAcceptableError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from serving.settings import ServingSettings

ROWS = np.array([[2.0, 1.0, 0.0, 0.0], [-2.0, -1.0, 0.0, 0.0], [0.1, -0.05, 1.0, 1.0]], dtype=np.float32)
CSV_BODY = b"\n".join(b",".join(str(float(v)).encode() for v in row) for row in ROWS) + b"\n"


def reference(model_dir: Path, rows: np.ndarray = ROWS) -> dict[str, np.ndarray]:
    """The graph's own outputs, straight from onnxruntime (the oracle for the formats)."""
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": rows}), strict=True))


def plane_for(model_dir: Path, **settings: Any) -> DataPlane:
    return DataPlane(model_dir, ServingSettings(workers=1, **settings)).load()


def f32(values: Any) -> list:
    return np.asarray(values, dtype=np.float32).tolist()


# -- response formats ---------------------------------------------------------------------------


def test_default_format_binary(binary_model: Path) -> None:
    ref = reference(binary_model)
    plane = plane_for(binary_model)
    body, ctype = plane.invoke(CSV_BODY, "text/csv")
    assert ctype == "application/json"
    predictions = orjson.loads(body)["predictions"]
    assert [p["label"] for p in predictions] == ref["label"].tolist()
    np.testing.assert_allclose([p["probabilities"] for p in predictions], ref["probabilities"], rtol=1e-6)
    body, ctype = plane.invoke(CSV_BODY, "text/csv", "text/csv")
    assert ctype == "text/csv"
    lines = body.decode().splitlines()
    assert len(lines) == 3
    for line, label, probs in zip(lines, ref["label"], ref["probabilities"], strict=True):
        fields = line.split(",")
        assert int(fields[0]) == label
        np.testing.assert_allclose([float(x) for x in fields[1:]], probs, rtol=1e-6)
    body, ctype = plane.invoke(CSV_BODY, "text/csv", "application/x-npy")
    np.testing.assert_allclose(np.load(io.BytesIO(body)), ref["probabilities"], rtol=1e-6)
    body, ctype = plane.invoke(CSV_BODY, "text/csv", "application/jsonlines")
    records = [json.loads(line) for line in body.decode().splitlines()]
    assert [r["label"] for r in records] == ref["label"].tolist()


def test_xgboost_format(model_factory: Callable[..., Path]) -> None:
    model = model_factory(
        "binary",
        {"format": 1, "framework": "xgboost", "task": "binary_classification", "response_format": "xgboost"},
    )
    p1 = reference(model)["probabilities"][:, 1]
    plane = plane_for(model)
    body, ctype = plane.invoke(CSV_BODY, "text/csv")  # CSV is xgboost's default answer
    assert ctype == "text/csv"
    np.testing.assert_allclose([float(x) for x in body.decode().split()], p1, rtol=1e-6)
    assert body.count(b"\n") == 3 and b"," not in body
    body, _ = plane.invoke(CSV_BODY, "text/csv", "application/json")
    assert [round(p["score"], 5) for p in orjson.loads(body)["predictions"]] == [round(v, 5) for v in f32(p1)]


def test_xgboost_multiclass_and_regression(model_factory: Callable[..., Path]) -> None:
    multi = model_factory(
        "multiclass", {"format": 1, "task": "multiclass_classification", "response_format": "xgboost"}
    )
    probs = reference(multi)["probabilities"]
    body, _ = plane_for(multi).invoke(CSV_BODY, "text/csv", "text/csv")
    got = [[float(x) for x in line.split(",")] for line in body.decode().splitlines()]
    np.testing.assert_allclose(got, probs, rtol=1e-6)
    reg = model_factory("regression", {"format": 1, "task": "regression", "response_format": "xgboost"})
    values = reference(reg)["variable"].reshape(-1)
    body, _ = plane_for(reg).invoke(CSV_BODY, "text/csv")
    np.testing.assert_allclose([float(x) for x in body.decode().split()], values, rtol=1e-5)


def test_linear_learner_format(model_factory: Callable[..., Path]) -> None:
    model = model_factory(
        "binary",
        {
            "format": 1,
            "framework": "linear-learner",
            "task": "binary_classification",
            "response_format": "linear-learner",
            "classes": [0, 1],
        },
    )
    p1 = reference(model)["probabilities"][:, 1]
    plane = plane_for(model)
    body, ctype = plane.invoke(CSV_BODY, "text/csv")  # JSON is linear-learner's default answer
    assert ctype == "application/json"
    predictions = orjson.loads(body)["predictions"]
    assert [set(p) for p in predictions] == [{"score", "predicted_label"}] * 3
    np.testing.assert_allclose([p["score"] for p in predictions], p1, rtol=1e-6)
    assert [p["predicted_label"] for p in predictions] == [int(v >= 0.5) for v in p1]
    body, _ = plane.invoke(CSV_BODY, "text/csv", "text/csv")
    rows = [line.split(",") for line in body.decode().splitlines()]
    assert [int(r[0]) for r in rows] == [int(v >= 0.5) for v in p1]
    np.testing.assert_allclose([float(r[1]) for r in rows], p1, rtol=1e-6)


def test_linear_learner_multiclass_and_regression(model_factory: Callable[..., Path]) -> None:
    multi = model_factory(
        "multiclass", {"format": 1, "task": "multiclass_classification", "response_format": "linear-learner"}
    )
    probs = reference(multi)["probabilities"]
    predictions = orjson.loads(plane_for(multi).invoke(CSV_BODY, "text/csv")[0])["predictions"]
    assert [p["predicted_label"] for p in predictions] == probs.argmax(axis=1).tolist()
    np.testing.assert_allclose([p["score"] for p in predictions], probs, rtol=1e-6)
    reg = model_factory(
        "regression", {"format": 1, "task": "regression", "response_format": "linear-learner"}
    )
    values = reference(reg)["variable"].reshape(-1)
    predictions = orjson.loads(plane_for(reg).invoke(CSV_BODY, "text/csv")[0])["predictions"]
    np.testing.assert_allclose([p["score"] for p in predictions], values, rtol=1e-5)
    assert all(set(p) == {"score"} for p in predictions)


def test_default_regression(model_factory: Callable[..., Path]) -> None:
    reg = model_factory("regression")
    values = reference(reg)["variable"].reshape(-1)
    plane = plane_for(reg)
    np.testing.assert_allclose(
        orjson.loads(plane.invoke(CSV_BODY, "text/csv")[0])["predictions"], values, rtol=1e-5
    )
    body, _ = plane.invoke(CSV_BODY, "text/csv", "text/csv")
    np.testing.assert_allclose([float(x) for x in body.split()], values, rtol=1e-5)


def test_threshold_and_classes(model_factory: Callable[..., Path]) -> None:
    model = model_factory(
        "binary", {"format": 1, "task": "binary_classification", "threshold": 0.9, "classes": ["no", "yes"]}
    )
    p1 = reference(model)["probabilities"][:, 1]
    predictions = orjson.loads(plane_for(model).invoke(CSV_BODY, "text/csv")[0])["predictions"]
    assert [p["label"] for p in predictions] == ["yes" if v >= 0.9 else "no" for v in p1]
    assert any(0.5 <= v < 0.9 for v in p1), "the rows must include one the threshold flips"


def test_default_accept_setting(binary_model: Path) -> None:
    plane = plane_for(binary_model, default_accept="text/csv")
    assert plane.invoke(CSV_BODY, "text/csv")[1] == "text/csv"


# -- input checks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "error", "message"),
    [
        (b"1,2,3\n", "text/csv", BadRequestError, "expects 4 features, got 3"),
        (
            b'{"instances": [["a", "b", "c", "d"]]}',
            "application/json",
            BadRequestError,
            "not a rectangular array",
        ),
        (b'{"inputs": {"x": [[1, 2, 3, 4]]}}', "application/json", BadRequestError, "unknown input(s) 'x'"),
        (b'{"instances": [[[1, 2, 3, 4]]]}', "application/json", BadRequestError, "expects 2 dimensions"),
        (b"[]", "application/json", BadRequestError, "has no records"),
        (b"1,2,3,4", "image/png", UnsupportedMediaTypeError, "unsupported Content-Type 'image/png'"),
    ],
)
def test_bad_input(binary_model: Path, body: bytes, content_type: str, error: type, message: str) -> None:
    plane = plane_for(binary_model)
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        plane.invoke(body, content_type)
    assert plane.invoke(b"1,2,3,4", "text/csv")[1] == "application/json"  # still serving


def test_named_inputs_and_npy_dtype_cast(binary_model: Path) -> None:
    plane = plane_for(binary_model)
    a = plane.invoke(b'{"inputs": {"input": [[1, 2, 3, 4]]}}', "application/json")[0]
    buffer = io.BytesIO()
    np.save(buffer, np.array([[1, 2, 3, 4]], dtype=np.float64))
    b = plane.invoke(buffer.getvalue(), "application/x-npy")[0]
    c = plane.invoke(b"[1, 2, 3, 4]", "application/json")[0]  # a single record without the batch axis
    assert a == b == c


def test_not_acceptable_and_payload_limit(binary_model: Path) -> None:
    plane = plane_for(binary_model, max_payload_mb=1)
    with pytest.raises(NotAcceptableError):
        plane.invoke(b"1,2,3,4", "text/csv", "image/png")
    with pytest.raises(PayloadTooLargeError, match="exceeds the 1 MB limit"):
        plane.invoke(b"1,2,3,4\n" * 200_000, "text/csv")


def test_load_failures(tmp_path: Path, binary_model: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    plane = DataPlane(empty, ServingSettings(workers=1))
    with pytest.raises(ModelLoadError, match="model.onnx not found"):
        plane.load()
    assert plane.error and not plane.ready
    with pytest.raises(ModelNotReadyError):
        plane.invoke(b"1", "text/csv")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    with pytest.raises(ModelLoadError, match="onnxruntime cannot load model.onnx"):
        DataPlane(broken, ServingSettings(workers=1)).load()
    bad_signature = tmp_path / "badsig"
    shutil.copytree(binary_model, bad_signature)
    (bad_signature / "signature.json").write_text(json.dumps({"format": 1, "response_format": "weird"}))
    with pytest.raises(ModelLoadError, match="response_format 'weird'"):
        DataPlane(bad_signature, ServingSettings(workers=1)).load()


# -- user hooks --------------------------------------------------------------------------------


def with_code(base: Path, tmp_path: Path, source: str, name: str = "inference.py") -> Path:
    model = tmp_path / "model"
    shutil.copytree(base, model)
    (model / "code").mkdir(exist_ok=True)
    (model / "code" / name).write_text(textwrap.dedent(source))
    return model


ALL_HOOKS = """
    import json

    def model_fn(model_dir):
        return {"scale": 10.0, "dir": model_dir}

    def input_fn(input_data, content_type):
        assert isinstance(input_data, (str, bytes))
        if isinstance(input_data, bytes):
            input_data = input_data.decode()
        return [float(x) for x in input_data.split()], content_type

    def predict_fn(data, model, context):
        values, content_type = data
        return {"sum": sum(values) * model["scale"], "type": content_type,
                "attrs": context.get_request_header(0, "X-Amzn-SageMaker-Custom-Attributes")}

    def output_fn(prediction, accept, context):
        seen = "seen=" + str(prediction["attrs"])
        context.set_response_header(0, "X-Amzn-SageMaker-Custom-Attributes", seen)
        return json.dumps(prediction), "application/vnd.custom+json"
"""


def test_every_hook_overridden(binary_model: Path, tmp_path: Path) -> None:
    plane = plane_for(with_code(binary_model, tmp_path, ALL_HOOKS))
    result = plane.invoke_full(b"1 2 3.5", "text/plain", "application/json", custom_attributes="trace=42")
    assert result.content_type == "application/vnd.custom+json"
    assert json.loads(result.body) == {"sum": 65.0, "type": "text/plain", "attrs": "trace=42"}
    assert result.custom_attributes == "seen=trace=42"


def test_transform_fn_gets_str_for_csv_and_context(binary_model: Path, tmp_path: Path) -> None:
    source = """
        def model_fn(model_dir, context):
            assert context.system_properties["model_dir"] == model_dir
            return "model"

        def transform_fn(model, input_data, content_type, accept, context):
            context.custom_attributes = "echo=" + (context.custom_attributes or "")
            return f"{model}|{type(input_data).__name__}|{input_data.strip()}|{content_type}|{accept}"
    """
    plane = plane_for(with_code(binary_model, tmp_path, source))
    result = plane.invoke_full(b"1,2\n", "text/csv", None, custom_attributes="a=b")
    assert result.body == b"model|str|1,2|text/csv|application/json"  # Accept defaults like the toolkit
    assert result.content_type == "application/json"
    assert result.custom_attributes == "echo=a=b"


def test_output_fn_only_reuses_the_onnx_model(binary_model: Path, tmp_path: Path) -> None:
    source = """
        def output_fn(prediction, accept):
            return "labels=" + ",".join(str(int(v)) for v in prediction["label"]), "text/plain"
    """
    ref = reference(binary_model)
    plane = plane_for(with_code(binary_model, tmp_path, source))
    body, ctype = plane.invoke(CSV_BODY, "text/csv", "text/plain")
    assert (body, ctype) == (("labels=" + ",".join(map(str, ref["label"].tolist()))).encode(), "text/plain")


def test_input_fn_only_and_default_output(binary_model: Path, tmp_path: Path) -> None:
    source = """
        import numpy as np

        def input_fn(input_data, content_type):
            return np.array([[float(v) for v in input_data.split(b";")]], dtype=np.float32)
    """
    plane = plane_for(with_code(binary_model, tmp_path, source))
    via_hook = orjson.loads(plane.invoke(b"2;1;0;0", "application/x-semicolons")[0])
    direct = orjson.loads(plane_for(binary_model).invoke(b"2,1,0,0", "text/csv")[0])
    assert via_hook == direct


def test_predict_fn_with_plain_python_model(binary_model: Path, tmp_path: Path) -> None:
    source = """
        class Doubler:
            def predict(self, data):
                return data * 2

        def model_fn(model_dir):
            return Doubler()
    """
    plane = plane_for(with_code(binary_model, tmp_path, source))
    assert orjson.loads(plane.invoke(b"1,2\n3,4\n", "text/csv")[0]) == [[2.0, 4.0], [6.0, 8.0]]
    assert plane.invoke(b"1,2\n", "text/csv", "text/csv")[0] == b"2.0,4.0\n"


def test_program_setting_and_hook_conflicts(binary_model: Path, tmp_path: Path) -> None:
    model = with_code(
        binary_model, tmp_path, "def transform_fn(m, d, c, a):\n    return 'serve.py'\n", "serve.py"
    )
    assert plane_for(model, program="serve.py").invoke(b"1", "text/csv")[0] == b"serve.py"
    with pytest.raises(ModelLoadError, match="SAGEMAKER_PROGRAM='missing.py'"):
        plane_for(model, program="missing.py")
    conflict = tmp_path / "conflict"
    shutil.copytree(model, conflict)
    (conflict / "code" / "inference.py").write_text(
        "def transform_fn(m, d, c, a): pass\ndef input_fn(d, c): pass\n"
    )
    with pytest.raises(ModelLoadError, match="Cannot use transform_fn"):
        plane_for(conflict)
    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    (broken / "code" / "inference.py").write_text("import no_such_module_here\n")
    with pytest.raises(ModelLoadError, match="importing code/inference.py failed: ModuleNotFoundError"):
        plane_for(broken)


def test_warmup_hook_failure_fails_the_load(binary_model: Path, tmp_path: Path) -> None:
    source = """
        def model_warmup_fn(model_dir, model):
            raise RuntimeError("warm-up exploded")
    """
    plane = DataPlane(with_code(binary_model, tmp_path, source), ServingSettings(workers=1))
    with pytest.raises(ModelLoadError, match="warm-up exploded"):
        plane.load()
    assert not plane.ready


def test_toolkit_errors_keep_their_status(binary_model: Path, tmp_path: Path) -> None:
    source = """
        from sagemaker_inference import errors

        def transform_fn(model, data, content_type, accept):
            raise errors.GenericInferenceToolkitError(422, "cannot score this")
    """
    from serving.errors import error_response

    plane = plane_for(with_code(binary_model, tmp_path, source))
    with pytest.raises(Exception) as info:
        plane.invoke(b"x", "text/csv")
    assert error_response(info.value) == (422, b'{"error":"cannot score this","status":422}')


def test_classifier_with_a_single_probability_output(model_factory: Callable[..., Path]) -> None:
    """A binary model whose graph has one [N] output (P(class 1)) still answers labels and scores."""
    model = model_factory(
        "regression",
        {"format": 1, "task": "binary_classification", "response_format": "linear-learner", "threshold": 0.5},
        name="single-output",
    )
    p1 = reference(model)["variable"].reshape(-1)
    predictions = orjson.loads(plane_for(model).invoke(CSV_BODY, "text/csv")[0])["predictions"]
    np.testing.assert_allclose([p["score"] for p in predictions], p1, rtol=1e-5)
    assert [p["predicted_label"] for p in predictions] == [int(v >= 0.5) for v in p1]


def test_npz_bodies_through_the_default_input_fn(binary_model: Path, tmp_path: Path) -> None:
    """A sparse matrix (scipy.sparse.save_npz) decodes; anything else is a 400 naming the format."""
    source = """
        def predict_fn(data, model):
            return {"shape": list(data.shape), "nnz": int(data.nnz)}
    """
    plane = plane_for(with_code(binary_model, tmp_path, source))
    matrix = scipy.sparse.random(3, 20, density=0.2, format="csr", dtype="float32", random_state=0)
    buffer = io.BytesIO()
    scipy.sparse.save_npz(buffer, matrix)
    body, _ = plane.invoke(buffer.getvalue(), "application/x-npz", "application/json")
    assert json.loads(body) == {"shape": [3, 20], "nnz": int(matrix.nnz)}
    dense = io.BytesIO()
    np.savez(dense, x=np.ones((2, 2)))
    for bad in (dense.getvalue(), b"not a zip file", b""):
        with pytest.raises(BadRequestError, match="malformed application/x-npz body"):
            plane.invoke(bad, "application/x-npz", "application/json")
