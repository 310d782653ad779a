"""``application/x-recordio-protobuf``: SageMaker's RecordIO framing around ``aialgs.data.Record`` protobufs.

The one codec of the format; training reads its channels with it and the model server its requests and
answers, so both read exactly what the SageMaker Python SDK writes (``sagemaker.amazon.common``:
``RecordSerializer``, ``write_numpy_to_dense_tensor``, ``write_spmatrix_to_sparse_tensor``) and write
what its ``RecordDeserializer`` reads.

- **Framing** (MXNet RecordIO): ``uint32 magic 0xced7230a``, ``uint32`` length word (low 29 bits the
  payload length, top 3 bits the part flag: 0 a whole record, 1 / 2 / 3 the first / a middle / the last
  part of a split one), the payload, zero padding to 4 bytes. Little-endian, as the SDK's
  ``struct.pack("I", ...)`` writes on every platform it runs on.
- **Payload**: the protobuf message ``Record`` of the SDK's ``record.proto`` (maps ``features`` and
  ``label`` of ``Value``: a ``Float32Tensor``, ``Float64Tensor``, ``Int32Tensor`` — ``values``, sparse
  ``keys``, ``shape`` — or ``Bytes``). The messages are made by the ``protobuf`` package from a descriptor
  equal to the SDK's (built below, in a private pool so the SDK's own ``record_pb2`` can be imported in
  the same process); the features are under the key ``"values"``.

Sparse records (``keys`` present) are dense rows with zeros where no key is, of width ``shape[0]``.
Every fault raises :class:`RecordIOError` naming the record (0-based) and what is wrong with it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import IO, Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

MAGIC = 0xCED7230A
#: what the SDK's ``RecordSerializer`` sends and ``RecordDeserializer`` asks for
CONTENT_TYPE = "application/x-recordio-protobuf"
#: the key of the features (and of a training label) in a record's maps
VALUES = "values"

#: the widest sparse record read (16M features: 64 MB per row)
MAX_WIDTH = 1 << 24

_HEADER = struct.Struct("<II")
_LENGTH_MASK = (1 << 29) - 1
_PADDING = (b"", b"\0\0\0", b"\0\0", b"\0")  # by length % 4


class RecordIOError(ValueError):
    """Malformed RecordIO/protobuf data; the message names the record and the fault."""


# -- the messages (sagemaker/amazon/record.proto) --------------------------------------------------
def _descriptor() -> descriptor_pb2.FileDescriptorProto:
    """``record.proto`` of the SageMaker Python SDK as a descriptor (package ``aialgs.data``, proto2)."""
    field = descriptor_pb2.FieldDescriptorProto
    repeated, optional = field.LABEL_REPEATED, field.LABEL_OPTIONAL
    # proto2, the default (protoc leaves `syntax` out of proto2 descriptors, as the SDK's record_pb2 shows)
    proto = descriptor_pb2.FileDescriptorProto(name="record.proto", package="aialgs.data")
    proto.options.java_package = "com.amazonaws.aialgorithms.proto"
    proto.options.java_outer_classname = "RecordProtos"
    for name, value_type in (
        ("Float32Tensor", field.TYPE_FLOAT),
        ("Float64Tensor", field.TYPE_DOUBLE),
        ("Int32Tensor", field.TYPE_INT32),
    ):
        tensor = proto.message_type.add(name=name)
        for number, member, member_type in (
            (1, "values", value_type),
            (2, "keys", field.TYPE_UINT64),
            (3, "shape", field.TYPE_UINT64),
        ):
            added = tensor.field.add(name=member, number=number, type=member_type, label=repeated)
            added.options.packed = True
    raw = proto.message_type.add(name="Bytes")
    raw.field.add(name="value", number=1, type=field.TYPE_BYTES, label=repeated)
    raw.field.add(name="content_type", number=2, type=field.TYPE_STRING, label=optional)
    value = proto.message_type.add(name="Value")
    value.oneof_decl.add(name="value")
    for number, member, type_name in (
        (2, "float32_tensor", "Float32Tensor"),
        (3, "float64_tensor", "Float64Tensor"),
        (7, "int32_tensor", "Int32Tensor"),
        (9, "bytes", "Bytes"),
    ):
        value.field.add(
            name=member,
            number=number,
            type=field.TYPE_MESSAGE,
            type_name=f".aialgs.data.{type_name}",
            label=optional,
            oneof_index=0,
        )
    record = proto.message_type.add(name="Record")
    for number, member, entry in ((1, "features", "FeaturesEntry"), (2, "label", "LabelEntry")):
        record.field.add(
            name=member,
            number=number,
            type=field.TYPE_MESSAGE,
            type_name=f".aialgs.data.Record.{entry}",
            label=repeated,
        )
        map_entry = record.nested_type.add(name=entry)
        map_entry.options.map_entry = True
        map_entry.field.add(name="key", number=1, type=field.TYPE_STRING, label=optional)
        map_entry.field.add(
            name="value", number=2, type=field.TYPE_MESSAGE, type_name=".aialgs.data.Value", label=optional
        )
    for number, member in ((3, "uid"), (4, "metadata"), (5, "configuration")):
        record.field.add(name=member, number=number, type=field.TYPE_STRING, label=optional)
    return proto


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_descriptor())
#: the file's descriptor, as a generated ``record_pb2.DESCRIPTOR`` (its ``serialized_pb`` equals the SDK's)
DESCRIPTOR: Any = _POOL.FindFileByName("record.proto")


def _message(name: str) -> Any:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"aialgs.data.{name}"))


#: the generated message classes (``Record()``, ``record.features["values"].float32_tensor.values``...)
Record: Any = _message("Record")
Value: Any = _message("Value")
Float32Tensor: Any = _message("Float32Tensor")
Float64Tensor: Any = _message("Float64Tensor")
Int32Tensor: Any = _message("Int32Tensor")

_DTYPES = {"float32_tensor": np.float32, "float64_tensor": np.float64, "int32_tensor": np.int32}


# -- RecordIO framing ------------------------------------------------------------------------------
def frame(payload: bytes) -> bytes:
    """One whole record: header, ``payload``, padding."""
    return _HEADER.pack(MAGIC, len(payload)) + payload + _PADDING[len(payload) % 4]


def split_records(data: bytes) -> list[bytes]:
    """The payloads of the (possibly multi-part) records of a RecordIO buffer."""
    payloads: list[bytes] = []
    parts: list[bytes] = []
    pos, end, index = 0, len(data), 0
    unpack = _HEADER.unpack_from
    while pos < end:
        if end - pos < 8:
            raise RecordIOError(f"record {index}: truncated header ({end - pos} of its 8 bytes)")
        magic, word = unpack(data, pos)
        if magic != MAGIC:
            raise RecordIOError(
                f"record {index}: bad magic 0x{magic:08x} at byte {pos} "
                f"(RecordIO records start with 0x{MAGIC:08x})"
            )
        length = word & _LENGTH_MASK
        start = pos + 8
        if start + length > end:
            raise RecordIOError(f"record {index}: truncated payload ({end - start} of its {length} bytes)")
        pos = start + length + (-length % 4)
        if word >> 29 == 0 and not parts:  # a whole record: the usual case, without the call
            payloads.append(data[start : start + length])
            index += 1
        else:
            index = _collect(word >> 29, data[start : start + length], parts, payloads, index)
    if parts:
        raise RecordIOError(f"record {index}: the data ends inside a multi-part record")
    return payloads


def iter_records(stream: IO[bytes]) -> Iterator[bytes]:
    """Yield the payload of every (possibly multi-part) record of a RecordIO stream, as it is read."""
    parts: list[bytes] = []
    index = pos = 0
    while True:
        header = stream.read(8)
        if not header:
            if parts:
                raise RecordIOError(f"record {index}: the data ends inside a multi-part record")
            return
        if len(header) < 8:
            raise RecordIOError(f"record {index}: truncated header ({len(header)} of its 8 bytes)")
        magic, word = _HEADER.unpack(header)
        if magic != MAGIC:
            raise RecordIOError(
                f"record {index}: bad magic 0x{magic:08x} at byte {pos} "
                f"(RecordIO records start with 0x{MAGIC:08x})"
            )
        length = word & _LENGTH_MASK
        data = stream.read(length)
        if len(data) < length:
            raise RecordIOError(f"record {index}: truncated payload ({len(data)} of its {length} bytes)")
        if length % 4:
            stream.read(-length % 4)
        pos += 8 + length + (-length % 4)
        whole: list[bytes] = []
        index = _collect(word >> 29, data, parts, whole, index)
        yield from whole


def _collect(flag: int, data: bytes, parts: list[bytes], out: list[bytes], index: int) -> int:
    """Add one part (flag 0 whole, 1 first, 2 middle, 3 last) to ``parts``/``out``; the next index."""
    if flag == 0:
        if parts:
            raise RecordIOError(f"record {index}: a whole record inside a multi-part record")
        out.append(data)
        return index + 1
    if flag == 1:
        if parts:
            raise RecordIOError(f"record {index}: a new multi-part record before the last one ended")
        parts.append(data)
        return index
    if not parts:
        raise RecordIOError(f"record {index}: a continuation part without a first part")
    parts.append(data)
    if flag == 3:
        out.append(b"".join(parts))
        parts.clear()
        return index + 1
    return index


# -- decoding --------------------------------------------------------------------------------------
def parse_record(payload: bytes, index: int = 0) -> Any:
    """One payload as a :data:`Record` message."""
    record = Record()
    try:
        record.ParseFromString(payload)
    except DecodeError as exc:
        raise RecordIOError(f"record {index}: not an aialgs.data.Record protobuf ({exc})") from None
    return record


def tensor_of(value: Any, what: str) -> tuple[np.ndarray, Sequence[int], Sequence[int]]:
    """``(values, keys, shape)`` of a numeric :data:`Value`; ``what`` names it in errors."""
    kind = value.WhichOneof("value")
    if kind is None or kind == "bytes":
        raise RecordIOError(f"{what} holds {'no tensor' if kind is None else 'Bytes'}, not numbers")
    tensor = getattr(value, kind)
    return np.array(tensor.values, dtype=_DTYPES[kind]), tensor.keys, tensor.shape


def dense_uniform(data: bytes, width: int | None = None) -> np.ndarray | None:
    """The features of :func:`read_uniform` (labels, if any, ignored), or None."""
    uniform = read_uniform(data, width)
    return None if uniform is None else uniform[0]


def read_uniform(data: bytes, width: int | None = None) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The usual body in one step: whole records that all encode a dense float tensor of one width and,
    in every record or in none, a one-value float label (what ``RecordSerializer`` and ``record_set()``
    write for float32 or float64 arrays), as a float32 ``[N, width]`` table and the float32 labels (None
    without labels); None for any other body, which :func:`dense_batch` then reads (and names the fault
    of).

    The first record is parsed by the protobuf package and must be exactly the canonical encoding of a
    ``Record`` holding only ``features["values"]`` (a Float32/Float64Tensor, no keys or shape) and maybe
    ``label["values"]``: a fresh message holding its values re-serialises to the same bytes (no other
    fields, no unknown ones), with the features' packed values closing the features entry and the
    label's value closing the record. Every other record must have the same header and the same bytes
    around those values: all the tags and lengths of its encoding are in them, so it is the same message
    with other values — read as one array each.
    """
    if len(data) < 8:
        return None
    magic, word = _HEADER.unpack_from(data, 0)
    length = word & _LENGTH_MASK
    stride = 8 + length + (-length % 4)
    if len(data) % stride == 8 + length and length % 4:
        # the last record without its padding (batch transform's SingleRecord requests drop it)
        data += _PADDING[length % 4]
    if magic != MAGIC or word >> 29 or len(data) % stride:
        return None
    payload = data[8 : 8 + length]
    first = Record()
    try:
        first.ParseFromString(payload)
    except DecodeError:
        return None
    features = _float_tensor(first.features)
    labels = _float_tensor(first.label) if len(first.label) else None
    if features is None or (len(first.label) and (labels is None or len(labels[1]) != 1)):
        return None
    kind, values = features
    if not values or (width is not None and len(values) != width):
        return None
    canonical = Record()
    getattr(canonical.features[VALUES], kind).values.extend(values)
    features_end = len(canonical.SerializeToString())  # the features entry comes first (field 1)
    label_size = 0
    if labels is not None:
        getattr(canonical.label[VALUES], labels[0]).values.extend(labels[1])
        label_size = _ITEMSIZE[labels[0]]
    if canonical.SerializeToString() != payload:
        return None
    feature_size = len(values) * _ITEMSIZE[kind]
    table = np.frombuffer(data, dtype=np.uint8).reshape(len(data) // stride, stride)
    fixed = [(0, 8 + features_end - feature_size), (8 + features_end, 8 + length - label_size)]
    for start, end in fixed:
        if start < end and not (table[:, start:end] == table[0, start:end]).all():
            return None
    X = _floats(table[:, 8 + features_end - feature_size : 8 + features_end], kind)
    y = None if labels is None else _floats(table[:, 8 + length - label_size : 8 + length], labels[0])
    return X, (None if y is None else y.reshape(-1))


_ITEMSIZE = {"float32_tensor": 4, "float64_tensor": 8}


def _float_tensor(entries: Any) -> tuple[str, Sequence[float]] | None:
    """``(tensor kind, values)`` of a map holding only ``"values"``, a float tensor without keys or
    shape; None otherwise (the canonical comparison in :func:`read_uniform` rules out keys and shape)."""
    if list(entries) != [VALUES]:
        return None
    kind = entries[VALUES].WhichOneof("value")
    if kind not in _ITEMSIZE:
        return None
    return kind, getattr(entries[VALUES], kind).values


def _floats(columns: np.ndarray, kind: str) -> np.ndarray:
    """Byte columns of little-endian floats as float32 values."""
    return (
        np.ascontiguousarray(columns)
        .view("<f4" if kind == "float32_tensor" else "<f8")
        .astype(np.float32, copy=False)
    )


def dense_batch(
    payloads: Iterable[bytes], width: int | None = None, *, pad: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Records as ``X`` (float32 ``[N, width]``) and their labels (float32 ``[N]``, None unless every
    record has ``label["values"]``).

    ``width`` (the model's feature count) fixes the row width; without it the rows must agree (a
    sparse record's width is its ``shape[0]``). A dense record of another length is an error, or with
    ``pad`` is zero-padded on the right (training's ``feature_dim``); a longer one is always an error.
    """
    rows: list[np.ndarray] = []
    labels: list[float] = []
    all_labelled = True
    for index, payload in enumerate(payloads):
        record = parse_record(payload, index)
        if VALUES not in record.features:
            raise RecordIOError(
                f"record {index}: no feature tensor features['values'] "
                f"(keys: {', '.join(map(repr, sorted(record.features))) or 'none'})"
            )
        values, keys, shape = tensor_of(record.features[VALUES], f"record {index}: features['values']")
        rows.append(_row(index, values, keys, shape, width))
        if VALUES in record.label:
            label, _, _ = tensor_of(record.label[VALUES], f"record {index}: label['values']")
            if label.size:
                labels.append(float(label[0]))
                continue
        all_labelled = False
    if not rows:
        return np.zeros((0, width or 0), dtype=np.float32), None
    lengths = {row.size for row in rows}
    target = width if width is not None else (max(lengths) if pad else rows[0].size)
    if lengths == {target}:
        X = np.array(rows, dtype=np.float32)
    else:
        X = np.zeros((len(rows), target), dtype=np.float32)
        for index, row in enumerate(rows):
            if row.size > target or (row.size < target and not pad):
                raise RecordIOError(
                    f"record {index}: {row.size} features, "
                    + (f"the model takes {target}" if width is not None else f"record 0 has {target}")
                )
            X[index, : row.size] = row
    return X, (np.array(labels, dtype=np.float32) if all_labelled else None)


def _row(
    index: int, values: np.ndarray, keys: Sequence[int], shape: Sequence[int], width: int | None
) -> np.ndarray:
    """One record's features as a dense float32 row."""
    if not len(keys):
        if not values.size and len(shape) == 1:  # a sparse record with no entries: all zeros
            return np.zeros(_width(index, int(shape[0]), width), dtype=np.float32)
        if len(shape) and int(np.prod(shape)) != values.size:
            raise RecordIOError(f"record {index}: shape {list(shape)} does not hold its {values.size} values")
        return values.astype(np.float32, copy=False)
    if len(keys) != values.size:
        raise RecordIOError(f"record {index}: {len(keys)} keys for {values.size} values")
    if len(shape):
        dim = int(shape[0])
    elif width is not None:
        dim = width
    else:
        dim = max(keys) + 1
    dim = _width(index, dim, width)
    positions = np.array(keys, dtype=np.uint64)
    beyond = positions >= dim
    if beyond.any():
        raise RecordIOError(
            f"record {index}: key {int(positions[beyond][0])} is beyond the record's width {dim}"
        )
    row = np.zeros(dim, dtype=np.float32)
    row[positions.astype(np.int64)] = values
    return row


def _width(index: int, dim: int, width: int | None) -> int:
    """``dim``, the width a sparse record asks for, unless it is more than the model takes (or than any
    model could: a few bytes of ``shape`` or ``keys`` must not allocate gigabytes)."""
    if width is not None and dim > width:
        raise RecordIOError(f"record {index}: {dim} features, the model takes {width}")
    if dim > MAX_WIDTH:
        raise RecordIOError(f"record {index}: {dim} features, more than the {MAX_WIDTH:,} this reader takes")
    return dim


# -- encoding --------------------------------------------------------------------------------------
def _tensor_name(dtype: np.dtype[Any]) -> str:
    """The tensor the SDK writes for ``dtype`` (its ``_resolve_type``: int64 → Int32, float64 → Float64)."""
    if dtype == np.dtype(np.float32):
        return "float32_tensor"
    if dtype == np.dtype(np.float64):
        return "float64_tensor"
    if dtype == np.dtype(int):
        return "int32_tensor"
    raise ValueError(f"unsupported dtype {dtype} (float32, float64 or int)")


def encode_dense(X: np.ndarray, labels: np.ndarray | None = None) -> bytes:
    """Rows of ``X`` as records, byte for byte what the SDK's ``write_numpy_to_dense_tensor`` (and so
    ``RecordSerializer``) writes: ``features["values"]`` and, with ``labels``, ``label["values"]``."""
    X = np.asarray(X)
    if X.ndim == 1:
        X = X.reshape(1, -1)
    if X.ndim != 2:
        raise ValueError(f"expected a matrix, got {X.ndim} dimensions")
    kind = _tensor_name(X.dtype)
    label_kind = _tensor_name(np.asarray(labels).dtype) if labels is not None else ""
    record = Record()
    out = []
    for index, row in enumerate(X):
        record.Clear()
        getattr(record.features[VALUES], kind).values.extend(row.tolist())
        if labels is not None:
            getattr(record.label[VALUES], label_kind).values.append(labels[index].item())
        out.append(frame(record.SerializeToString()))
    return b"".join(out)


def encode_sparse(X: Any, labels: np.ndarray | None = None) -> bytes:
    """Rows of a scipy sparse matrix as sparse records (values, keys, ``shape = [columns]``), as the
    SDK's ``write_spmatrix_to_sparse_tensor`` writes them."""
    csr = X.tocsr()
    kind = _tensor_name(csr.dtype)
    label_kind = _tensor_name(np.asarray(labels).dtype) if labels is not None else ""
    record = Record()
    out = []
    for index in range(csr.shape[0]):
        record.Clear()
        start, end = csr.indptr[index], csr.indptr[index + 1]
        tensor = getattr(record.features[VALUES], kind)
        tensor.values.extend(csr.data[start:end].tolist())
        tensor.keys.extend(csr.indices[start:end].astype(np.uint64).tolist())
        if labels is not None:
            getattr(record.label[VALUES], label_kind).values.append(labels[index].item())
        tensor.shape.append(csr.shape[1])
        out.append(frame(record.SerializeToString()))
    return b"".join(out)


def encode_label_records(records: Sequence[Mapping[str, Any]]) -> bytes:
    """One record per answer, each member a float32 tensor in ``label`` (what linear-learner answers:
    ``label["score"]``, ``label["predicted_label"]``); a number is a one-value tensor, a list a vector."""
    record = Record()
    out = []
    for answer in records:
        record.Clear()
        for name, value in answer.items():
            values = record.label[name].float32_tensor.values
            if isinstance(value, (list, tuple, np.ndarray)):
                values.extend(float(v) for v in value)
            else:
                values.append(float(value))
        out.append(frame(record.SerializeToString(deterministic=True)))
    return b"".join(out)
