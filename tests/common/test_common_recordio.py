"""common.recordio: RecordIO framing and the SDK's Record message (hypothesis round trips, every fault named).

Compatibility with the SageMaker Python SDK's own writer and reader is tested against the SDK itself in
tests/serving/test_sdk_formats.py (through the SDK's venv); here the codec is checked against numpy /
scipy and against the protobuf wire format's own rules.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from common import recordio
from common.recordio import Record, RecordIOError

_FLOATS = st.floats(-1e6, 1e6, allow_nan=False, width=32)


def _matrix(dtype: type = np.float32) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(dtype, st.tuples(st.integers(1, 12), st.integers(1, 9)), elements=_FLOATS)


@settings(max_examples=60, deadline=None)
@given(_matrix(), st.booleans())
def test_dense_round_trip(X: np.ndarray, labelled: bool) -> None:
    y = np.arange(X.shape[0], dtype=np.float32) if labelled else None
    data = recordio.encode_dense(X, y)
    assert len(data) % 4 == 0
    got_X, got_y = recordio.dense_batch(recordio.split_records(data))
    np.testing.assert_array_equal(got_X, X)
    if labelled:
        np.testing.assert_array_equal(got_y, y)
    else:
        assert got_y is None
    # the stream reader (training's Pipe/File channels) reads the same records
    assert list(recordio.iter_records(io.BytesIO(data))) == recordio.split_records(data)


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 10), st.integers(1, 12)),
        elements=st.one_of(st.just(0.0), _FLOATS),
    )
)
def test_sparse_round_trip_equals_the_dense_matrix(dense: np.ndarray) -> None:
    data = recordio.encode_sparse(sp.csr_matrix(dense), np.ones(dense.shape[0], dtype=np.float32))
    got, labels = recordio.dense_batch(recordio.split_records(data))
    np.testing.assert_array_equal(got, dense)
    np.testing.assert_array_equal(labels, np.ones(dense.shape[0]))


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 5)), elements=_FLOATS))
def test_float64_and_int_tensors_are_read(X: np.ndarray) -> None:
    # the SDK writes a float64 array as Float64Tensor and an int array as Int32Tensor
    got, _ = recordio.dense_batch(recordio.split_records(recordio.encode_dense(X)))
    np.testing.assert_array_equal(got, X.astype(np.float32))
    ints = np.round(X).astype(int) % 1000
    got, _ = recordio.dense_batch(recordio.split_records(recordio.encode_dense(ints)))
    np.testing.assert_array_equal(got, ints.astype(np.float32))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(_FLOATS, st.integers(0, 4), st.lists(_FLOATS, max_size=3)), min_size=1, max_size=8))
def test_label_records_round_trip(answers: list[tuple[float, int, list[float]]]) -> None:
    records = [{"score": s, "predicted_label": k, "extra": v} for s, k, v in answers]
    data = recordio.encode_label_records(records)
    for payload, (score, label, extra) in zip(recordio.split_records(data), answers, strict=True):
        record = recordio.parse_record(payload)
        assert list(record.features) == []
        assert list(record.label["score"].float32_tensor.values) == [np.float32(score)]
        assert list(record.label["predicted_label"].float32_tensor.values) == [float(label)]
        assert list(record.label["extra"].float32_tensor.values) == [np.float32(v) for v in extra]


def test_framing_is_magic_length_payload_padding() -> None:
    record = Record()
    record.features["values"].float32_tensor.values.extend([1.5, 2.5])
    payload = record.SerializeToString()
    framed = recordio.encode_dense(np.array([[1.5, 2.5]], dtype=np.float32))
    assert framed[:8] == struct.pack("<II", recordio.MAGIC, len(payload))
    assert framed[8 : 8 + len(payload)] == payload
    assert framed[8 + len(payload) :] == b"\0" * (-len(payload) % 4)


def test_multi_part_records_are_joined() -> None:
    payload = Record()
    payload.features["values"].float32_tensor.values.extend([1.0, 2.0, 3.0])
    raw = payload.SerializeToString()
    parts = [raw[:5], raw[5:9], raw[9:]]
    data = b"".join(
        struct.pack("<II", recordio.MAGIC, (flag << 29) | len(part)) + part + b"\0" * (-len(part) % 4)
        for flag, part in zip((1, 2, 3), parts, strict=True)
    )
    assert recordio.split_records(data) == [raw]
    assert list(recordio.iter_records(io.BytesIO(data))) == [raw]


def _sparse(values: list[float], keys: list[int], shape: list[int]) -> bytes:
    record = Record()
    tensor = record.features["values"].float32_tensor
    tensor.values.extend(values)
    tensor.keys.extend(keys)
    tensor.shape.extend(shape)
    return recordio.frame(record.SerializeToString())


def test_sparse_width_comes_from_shape_then_the_model() -> None:
    data = _sparse([3.0, 4.0], [1, 3], [5])
    np.testing.assert_array_equal(
        recordio.dense_batch([recordio.split_records(data)[0]])[0], [[0, 3, 0, 4, 0]]
    )
    no_shape = recordio.split_records(_sparse([3.0], [1], []))
    np.testing.assert_array_equal(recordio.dense_batch(no_shape, 4)[0], [[0, 3, 0, 0]])


GOOD = recordio.encode_dense(np.ones((2, 3), dtype=np.float32))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (GOOD[:5], r"record 0: truncated header \(5 of its 8 bytes\)"),
        (GOOD[:20], r"record 0: truncated payload \(12 of its \d+ bytes\)"),
        (GOOD + GOOD[:30], r"record 2: truncated payload"),
        (b"\x01\x02\x03\x04" + GOOD[4:], "record 0: bad magic 0x04030201 at byte 0"),
        (GOOD[: len(GOOD) // 2] + b"junkjunk", "record 1: bad magic"),
        (
            struct.pack("<II", recordio.MAGIC, (1 << 29) | 4) + b"\x0a\x02ab",
            "record 0: the data ends inside a multi-part record",
        ),
        (
            struct.pack("<II", recordio.MAGIC, (2 << 29) | 4) + b"\x0a\x02ab",
            "record 0: a continuation part without a first part",
        ),
        (recordio.frame(b"\xff\xff\xff"), "record 0: not an aialgs.data.Record protobuf"),
        (recordio.frame(b"\x0a\x05\x0a\x03abc"), "record 0: no feature tensor features\\['values'\\]"),
        (_sparse([1.0, 2.0], [0], [3]), "record 0: 1 keys for 2 values"),
        (_sparse([1.0], [7], [3]), "record 0: key 7 is beyond the record's width 3"),
    ],
)
def test_faults_are_named(data: bytes, message: str) -> None:
    with pytest.raises(RecordIOError, match=message):
        recordio.dense_batch(recordio.split_records(data))
    with pytest.raises(RecordIOError, match=message):
        recordio.dense_batch(recordio.iter_records(io.BytesIO(data)))


def test_rows_that_disagree_with_the_width_are_refused_or_padded() -> None:
    data = recordio.encode_dense(np.ones((1, 3), dtype=np.float32)) + recordio.encode_dense(
        np.ones((1, 2), dtype=np.float32)
    )
    with pytest.raises(RecordIOError, match="record 1: 2 features, record 0 has 3"):
        recordio.dense_batch(recordio.split_records(data))
    with pytest.raises(RecordIOError, match="record 0: 3 features, the model takes 4"):
        recordio.dense_batch(recordio.split_records(data), 4)
    padded, _ = recordio.dense_batch(recordio.split_records(data), 4, pad=True)
    np.testing.assert_array_equal(padded, [[1, 1, 1, 0], [1, 1, 0, 0]])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_the_reader(data: bytes) -> None:
    try:
        recordio.dense_batch(recordio.split_records(data))
    except RecordIOError:
        pass


# -- the one-step reader of uniform dense bodies (serving's usual request) ----------------------------
@settings(max_examples=60, deadline=None)
@given(st.one_of(_matrix(np.float32), _matrix(np.float64)))
def test_uniform_dense_bodies_read_in_one_step_equal_the_record_reader(X: np.ndarray) -> None:
    data = recordio.encode_dense(X)
    table = recordio.dense_uniform(data)
    assert table is not None and table.dtype == np.float32
    np.testing.assert_array_equal(table, recordio.dense_batch(recordio.split_records(data))[0])
    assert recordio.dense_uniform(data, X.shape[1]) is not None
    assert recordio.dense_uniform(data, X.shape[1] + 1) is None  # another width: the reader names it


@settings(max_examples=60, deadline=None)
@given(st.one_of(_matrix(np.float32), _matrix(np.float64)), st.sampled_from([np.float32, np.float64]))
def test_labelled_uniform_bodies_read_in_one_step_equal_the_record_reader(X: np.ndarray, dtype: type) -> None:
    y = np.arange(X.shape[0]).astype(dtype) - 1.5
    data = recordio.encode_dense(X, y)
    uniform = recordio.read_uniform(data)
    assert uniform is not None
    expected_X, expected_y = recordio.dense_batch(recordio.split_records(data))
    np.testing.assert_array_equal(uniform[0], expected_X)
    np.testing.assert_array_equal(uniform[1], expected_y)


@settings(max_examples=300, deadline=None)
@given(_matrix(np.float32), st.booleans(), st.data())
def test_a_changed_byte_never_makes_the_one_step_reader_disagree(
    X: np.ndarray, labelled: bool, data: st.DataObject
) -> None:
    labels = np.arange(X.shape[0], dtype=np.float32) if labelled else None
    body = bytearray(recordio.encode_dense(X, labels))
    at = data.draw(st.integers(0, len(body) - 1))
    body[at] = data.draw(st.integers(0, 255))
    uniform = recordio.read_uniform(bytes(body))
    if uniform is not None:  # then the authoritative reader reads the same, without an error
        expected_X, expected_y = recordio.dense_batch(recordio.split_records(bytes(body)))
        np.testing.assert_array_equal(uniform[0], expected_X)
        np.testing.assert_array_equal(uniform[1], expected_y)


def test_other_bodies_are_left_to_the_record_reader() -> None:
    X = np.ones((3, 4), dtype=np.float32)
    with_uid = Record()
    with_uid.features["values"].float32_tensor.values.extend([1.0, 2.0, 3.0, 4.0])
    with_uid.uid = "r1"
    bodies = {
        "int labels": recordio.encode_dense(X, np.ones(3, dtype=int)),
        "labelled and not": recordio.encode_dense(X, np.ones(3, dtype=np.float32)) + recordio.encode_dense(X),
        "sparse": recordio.encode_sparse(sp.csr_matrix(X)),
        "int": recordio.encode_dense(X.astype(int)),
        "mixed widths": recordio.encode_dense(X) + recordio.encode_dense(np.ones((1, 3), dtype=np.float32)),
        "uid": recordio.frame(with_uid.SerializeToString()) * 2,
        "truncated": recordio.encode_dense(X)[:-4],
        "empty": b"",
    }
    for name, body in bodies.items():
        assert recordio.dense_uniform(body) is None, name
    # values written unpacked (valid protobuf, what a proto2 writer without [packed=true] emits): read by
    # the record reader, not in one step
    unpacked = _unpacked_record([1.0, 2.0, 3.0])
    assert recordio.dense_uniform(recordio.frame(unpacked)) is None
    np.testing.assert_array_equal(
        recordio.dense_batch(recordio.split_records(recordio.frame(unpacked)))[0], [[1, 2, 3]]
    )


def _unpacked_record(values: list[float]) -> bytes:
    """A Record whose Float32Tensor values are not packed, written by a message of the same shape whose
    ``values`` field lacks ``[packed = true]``."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="unpacked.proto", package="unpacked", syntax="proto2")
    tensor = proto.message_type.add(name="Tensor")
    tensor.field.add(name="values", number=1, type=field.TYPE_FLOAT, label=field.LABEL_REPEATED)
    for name, number, type_name in (("Value", 2, "Tensor"), ("Entry", 2, "Value")):
        message = proto.message_type.add(name=name)
        if name == "Entry":
            message.field.add(name="key", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
        message.field.add(
            name="inner",
            number=number,
            type=field.TYPE_MESSAGE,
            type_name=f".unpacked.{type_name}",
            label=field.LABEL_OPTIONAL,
        )
    record = proto.message_type.add(name="Record")
    record.field.add(
        name="features",
        number=1,
        type=field.TYPE_MESSAGE,
        type_name=".unpacked.Entry",
        label=field.LABEL_REPEATED,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    message = message_factory.GetMessageClass(pool.FindMessageTypeByName("unpacked.Record"))()
    entry = message.features.add(key="values")
    entry.inner.inner.values.extend(values)
    return bytes(message.SerializeToString())


def test_a_last_record_without_its_padding_is_read_in_one_step_too() -> None:
    X = np.arange(60, dtype=np.float32).reshape(2, 30)  # 30 values: the lengths take 2-byte varints
    record = Record()
    record.features["values"].float32_tensor.values.extend(X[0].tolist())
    assert len(record.SerializeToString()) % 4  # this record needs padding
    body = recordio.encode_dense(X)
    unpadded = body[: len(body) - (-len(record.SerializeToString()) % 4)]
    np.testing.assert_array_equal(recordio.dense_uniform(unpadded), X)
    np.testing.assert_array_equal(recordio.dense_batch(recordio.split_records(unpadded))[0], X)


def test_a_huge_sparse_width_is_refused_before_it_is_allocated() -> None:
    for shape, width, message in (
        ([1 << 40], None, "record 0: 1099511627776 features, more than the 16,777,216"),
        ([1 << 40], 4, "record 0: 1099511627776 features, the model takes 4"),
        ([], 4, "record 0: key 9 is beyond the record's width 4"),
    ):
        with pytest.raises(RecordIOError, match=message):
            recordio.dense_batch(recordio.split_records(_sparse([1.0], [9], shape)), width)
    empty = Record()
    empty.features["values"].float32_tensor.shape.append(1 << 40)
    with pytest.raises(RecordIOError, match="more than the 16,777,216"):
        recordio.dense_batch([empty.SerializeToString()])
