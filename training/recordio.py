"""``application/x-recordio-protobuf``: SageMaker's RecordIO framing around ``aialgs.data.Record`` protobufs.

Each record is ``uint32 magic 0xced7230a`` + ``uint32 length`` (low 29 bits; the top 3 bits flag
multi-part records) + payload + padding to 4 bytes. The payload is a ``Record`` with the maps
``features`` (1) and ``label`` (2) of ``Value`` (Float32Tensor 2, Float64Tensor 3, Int32Tensor 7); the
tensor has packed ``values`` (1), sparse ``keys`` (2) and ``shape`` (3). The key is ``"values"``.
A small wire-format codec is enough for these messages, so no generated protobuf module is needed.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import IO

import numpy as np

MAGIC = 0xCED7230A
_HEADER = struct.Struct("<II")


class RecordIOError(ValueError):
    """Malformed RecordIO/protobuf data; the message says which record."""


# -- protobuf wire format ------------------------------------------------------------------------
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise RecordIOError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise RecordIOError("varint too long")


def _fields(buf: bytes) -> Iterator[tuple[int, int, bytes | int]]:
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _varint(buf, pos)
            yield num, wire, val
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise RecordIOError("truncated field")
            yield num, wire, buf[pos : pos + length]
            pos += length
        elif wire == 5:
            yield num, wire, buf[pos : pos + 4]
            pos += 4
        elif wire == 1:
            yield num, wire, buf[pos : pos + 8]
            pos += 8
        else:
            raise RecordIOError(f"unsupported wire type {wire}")


def _packed_varints(data: bytes) -> list[int]:
    out, pos = [], 0
    while pos < len(data):
        v, pos = _varint(data, pos)
        out.append(v)
    return out


def _tensor(kind: int, buf: bytes) -> tuple[np.ndarray, list[int], list[int]]:
    values: list[np.ndarray] = []
    keys: list[int] = []
    shape: list[int] = []
    for num, wire, val in _fields(buf):
        if num == 1:
            if kind == 2:
                values.append(np.frombuffer(val, dtype="<f4"))  # type: ignore[arg-type]
            elif kind == 3:
                values.append(np.frombuffer(val, dtype="<f8"))  # type: ignore[arg-type]
            else:
                ints = _packed_varints(val) if wire == 2 else [int(val)]  # type: ignore[arg-type]
                values.append(
                    np.array([(v - (1 << 64)) if v >= 1 << 63 else v for v in ints], dtype=np.int64)
                )
        elif num == 2:
            keys += _packed_varints(val) if wire == 2 else [int(val)]  # type: ignore[arg-type]
        elif num == 3:
            shape += _packed_varints(val) if wire == 2 else [int(val)]  # type: ignore[arg-type]
    arr = np.concatenate(values).astype(np.float64) if values else np.zeros(0)
    return arr, keys, shape


def _value(buf: bytes) -> tuple[np.ndarray, list[int], list[int]]:
    for num, _wire, val in _fields(buf):
        if num in (2, 3, 7):
            return _tensor(num, val)  # type: ignore[arg-type]
    raise RecordIOError("Value has no float32/float64/int32 tensor")


def _map_values(buf: bytes) -> tuple[str, tuple[np.ndarray, list[int], list[int]]] | None:
    key, value = "", None
    for num, _wire, val in _fields(buf):
        if num == 1:
            key = bytes(val).decode("utf-8")
        elif num == 2:
            value = _value(val)  # type: ignore[arg-type]
    return (key, value) if value is not None else None


def decode_record(
    payload: bytes,
) -> tuple[
    dict[str, tuple[np.ndarray, list[int], list[int]]], dict[str, tuple[np.ndarray, list[int], list[int]]]
]:
    """One ``Record`` → (features, label), each ``name → (values, keys, shape)``."""
    features: dict[str, tuple[np.ndarray, list[int], list[int]]] = {}
    label: dict[str, tuple[np.ndarray, list[int], list[int]]] = {}
    for num, _wire, val in _fields(payload):
        if num in (1, 2):
            entry = _map_values(val)  # type: ignore[arg-type]
            if entry:
                (features if num == 1 else label)[entry[0]] = entry[1]
    return features, label


# -- RecordIO framing ----------------------------------------------------------------------------
def iter_records(stream: IO[bytes]) -> Iterator[bytes]:
    """Yield the payload of every (possibly multi-part) record of a RecordIO stream."""
    parts: list[bytes] = []
    index = 0
    while True:
        header = stream.read(8)
        if not header:
            if parts:
                raise RecordIOError(f"record {index}: stream ended inside a multi-part record")
            return
        if len(header) < 8:
            raise RecordIOError(f"record {index}: truncated header")
        magic, lrec = _HEADER.unpack(header)
        if magic != MAGIC:
            raise RecordIOError(f"record {index}: bad magic 0x{magic:08x} (not RecordIO)")
        cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
        data = stream.read(length)
        if len(data) < length:
            raise RecordIOError(f"record {index}: truncated payload")
        pad = (4 - length % 4) % 4
        if pad:
            stream.read(pad)
        if cflag == 0:
            yield data
            index += 1
        elif cflag == 1:
            parts = [data]
        elif cflag == 2:
            parts.append(data)
        else:
            parts.append(data)
            yield b"".join(parts)
            parts = []
            index += 1


def read_dense(stream: IO[bytes], feature_dim: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a whole RecordIO-protobuf stream into ``X`` (float32 [N, D]) and ``y`` (float32 [N] or None)."""
    rows: list[np.ndarray] = []
    labels: list[float] = []
    have_label = True
    for i, payload in enumerate(iter_records(stream)):
        try:
            features, label = decode_record(payload)
        except RecordIOError as exc:
            raise RecordIOError(f"record {i}: {exc}") from exc
        if "values" not in features:
            raise RecordIOError(f"record {i}: no feature named 'values'")
        values, keys, shape = features["values"]
        if keys:
            dim = int(shape[0]) if shape else (feature_dim or (max(keys) + 1))
            row = np.zeros(dim, dtype=np.float32)
            row[np.asarray(keys, dtype=np.int64)] = values
        else:
            row = values.astype(np.float32)
        rows.append(row)
        if "values" in label and label["values"][0].size:
            labels.append(float(label["values"][0][0]))
        else:
            have_label = False
    if not rows:
        return np.zeros((0, feature_dim or 0), dtype=np.float32), None
    width = feature_dim or max(r.size for r in rows)
    X = np.zeros((len(rows), width), dtype=np.float32)
    for i, r in enumerate(rows):
        if r.size > width:
            raise RecordIOError(f"record {i}: {r.size} features, more than feature_dim={width}")
        X[i, : r.size] = r
    return X, (np.asarray(labels, dtype=np.float32) if have_label and labels else None)


# -- encoding (tests, clients) -------------------------------------------------------------------
def _enc_varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _enc_field(num: int, payload: bytes) -> bytes:
    return _enc_varint((num << 3) | 2) + _enc_varint(len(payload)) + payload


def _enc_f32_tensor(values: np.ndarray) -> bytes:
    vals = np.asarray(values, dtype="<f4").ravel()
    return _enc_field(1, vals.tobytes()) + _enc_field(3, _enc_varint(vals.size))


def encode_record(features: np.ndarray, label: float | None = None) -> bytes:
    """One dense float32 ``Record`` with ``features["values"]`` and optionally ``label["values"]``."""
    value = _enc_field(2, _enc_f32_tensor(features))
    out = _enc_field(1, _enc_field(1, b"values") + _enc_field(2, value))
    if label is not None:
        lvalue = _enc_field(2, _enc_f32_tensor(np.asarray([label])))
        out += _enc_field(2, _enc_field(1, b"values") + _enc_field(2, lvalue))
    return out


def write_recordio(stream: IO[bytes], X: np.ndarray, y: np.ndarray | None = None) -> None:
    """Write rows of ``X`` (and labels ``y``) as RecordIO-protobuf records."""
    for i in range(X.shape[0]):
        payload = encode_record(X[i], None if y is None else float(y[i]))
        stream.write(_HEADER.pack(MAGIC, len(payload)) + payload + b"\0" * ((4 - len(payload) % 4) % 4))
