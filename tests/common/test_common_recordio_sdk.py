"""common.recordio is bit-compatible with the SageMaker Python SDK's own RecordIO-protobuf functions
(``sagemaker.amazon.common``), run in the SDK's venv through tests/sdkkit.py: what the SDK writes (its
``RecordSerializer``, ``write_numpy_to_dense_tensor``, ``write_spmatrix_to_sparse_tensor``) equals what
``common.recordio`` writes for the same arrays, byte for byte, and reads back as the same matrix; what the
model server answers is what the SDK's ``RecordDeserializer`` reads."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import sdkkit

from common import recordio

#: with the SDK tests: it needs the SDK's venv, which `make test` builds and `make test-fast` does not
pytestmark = pytest.mark.slow

SCRIPT = """
import base64, io
import numpy as np
import scipy.sparse as sp
from sagemaker.amazon import record_pb2
from sagemaker.amazon.common import (
    RecordDeserializer, RecordSerializer, read_records, write_numpy_to_dense_tensor,
    write_spmatrix_to_sparse_tensor,
)

arrays = dict(np.load("arrays.npz"))
out = {}
for name, array in arrays.items():
    if name == "labels":
        continue
    buffer = io.BytesIO()
    if name.startswith("sparse"):
        write_spmatrix_to_sparse_tensor(buffer, sp.csr_matrix(array), arrays["labels"])
    elif name == "with_labels":
        write_numpy_to_dense_tensor(buffer, array, arrays["labels"])
    else:
        buffer = RecordSerializer().serialize(array)
    out[name] = base64.b64encode(buffer.getvalue()).decode()

# our encoder's bytes, read by the SDK's reader and its RecordDeserializer (what predict() returns)
ours = open("ours.rec", "rb").read()
dense = [list(r.features["values"].float32_tensor.values) for r in read_records(io.BytesIO(ours))]
deserializer = RecordDeserializer()
answers = deserializer.deserialize(io.BytesIO(open("answers.rec", "rb").read()), deserializer.ACCEPT[0])
out["read_ours"] = dense
out["answers"] = [
    {key: list(value.float32_tensor.values) for key, value in record.label.items()} for record in answers
]
out["descriptor"] = base64.b64encode(record_pb2.DESCRIPTOR.serialized_pb).decode()
result(out)
"""


def test_encoder_and_reader_match_the_sdk_byte_for_byte(moto_server: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(24)
    dense = rng.normal(size=(7, 5)).astype(np.float32)
    dense[0, 0] = -0.0
    dense[1, 1] = 3.4e38
    dense[2, 2] = 1e-45  # a subnormal float32
    sparse = dense.copy()
    sparse[np.abs(sparse) < 0.8] = 0.0
    sparse[3] = 0.0  # a record with no entries
    labels = (rng.random(7) > 0.5).astype(np.float32)
    arrays = {
        "float32": dense,
        "float64": rng.normal(size=(4, 6)),
        "int": rng.integers(-1000, 1000, size=(3, 5)),
        "vector": dense[0],  # the serializer's 1-D case: one record
        "with_labels": dense,
        "sparse": sparse,
        "labels": labels,
    }
    workdir = tmp_path / "sdk"
    workdir.mkdir()
    np.savez(workdir / "arrays.npz", **arrays)  # type: ignore[arg-type]
    (workdir / "ours.rec").write_bytes(recordio.encode_dense(dense))
    answers = [
        {"score": 0.25, "predicted_label": 0},
        {"score": 0.75, "predicted_label": 1},
        {"score": [0.1, 0.9]},
    ]
    (workdir / "answers.rec").write_bytes(recordio.encode_label_records(answers))

    run = sdkkit.run_sdk(
        SCRIPT, platform_url="http://127.0.0.1:9", moto_url=moto_server, workdir=workdir, timeout=300
    ).check()
    # the same messages: our descriptor is the SDK's record.proto, byte for byte
    assert base64.b64decode(run.result["descriptor"]) == recordio.DESCRIPTOR.serialized_pb
    sdk = {
        key: value for key, value in run.result.items() if key not in ("read_ours", "answers", "descriptor")
    }
    ours = {
        "float32": recordio.encode_dense(arrays["float32"]),
        "float64": recordio.encode_dense(arrays["float64"]),
        "int": recordio.encode_dense(arrays["int"]),
        "vector": recordio.encode_dense(arrays["vector"]),
        "with_labels": recordio.encode_dense(dense, labels),
        "sparse": recordio.encode_sparse(sp.csr_matrix(sparse), labels),
    }
    assert set(sdk) == set(ours)
    for name, data in ours.items():
        assert base64.b64decode(sdk[name]) == data, name
    # and what the SDK wrote reads back as the arrays
    for name in ("float32", "float64", "int", "with_labels", "sparse"):
        table, got_labels = recordio.dense_batch(recordio.split_records(base64.b64decode(sdk[name])))
        np.testing.assert_array_equal(table, np.asarray(arrays[name], dtype=np.float32))
        if name in ("with_labels", "sparse"):
            np.testing.assert_array_equal(got_labels, labels)
    assert run.result["read_ours"] == dense.tolist()
    assert run.result["answers"] == [
        {"score": [0.25], "predicted_label": [0.0]},
        {"score": [0.75], "predicted_label": [1.0]},
        {"score": [np.float32(0.1).item(), np.float32(0.9).item()]},
    ]
