"""RecordIO-protobuf decode: the protobuf package (``common.recordio``) vs the hand-written parser it replaced

    .venv/bin/python -m bench.recordio [--rows 1000] [--features 100] [--seconds 1] [--reps 5]

One batch of ``--rows`` dense float32 records with labels, as the SDK's ``record_set()`` writes them,
decoded to ``X``/``y`` by each reader — the hand-written parser, the protobuf package record by record
(``common.recordio.dense_batch``) and training's reader (``training.recordio.read_dense``, which reads such
uniform records in one step) — alternately, ``--reps`` times for ``--seconds`` each; the median
batches/s of each and their ratio are printed (goal: protobuf ≥ 0.8 × the hand-written parser). The
baseline is the parser ``training/recordio.py`` had before it moved to the protobuf package (issue 24),
kept here verbatim (its decode half) so that every run measures both on the same machine.
"""

from __future__ import annotations

import argparse
import io
import statistics
import struct
import time
from collections.abc import Callable, Iterator
from typing import IO

import numpy as np

from common import recordio
from training import recordio as training_recordio

MAGIC = 0xCED7230A
_HEADER = struct.Struct("<II")


# -- protobuf wire format ------------------------------------------------------------------------
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise ValueError("varint too long")


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
                raise ValueError("truncated field")
            yield num, wire, buf[pos : pos + length]
            pos += length
        elif wire == 5:
            yield num, wire, buf[pos : pos + 4]
            pos += 4
        elif wire == 1:
            yield num, wire, buf[pos : pos + 8]
            pos += 8
        else:
            raise ValueError(f"unsupported wire type {wire}")


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
    raise ValueError("Value has no float32/float64/int32 tensor")


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
                raise ValueError(f"record {index}: stream ended inside a multi-part record")
            return
        if len(header) < 8:
            raise ValueError(f"record {index}: truncated header")
        magic, lrec = _HEADER.unpack(header)
        if magic != MAGIC:
            raise ValueError(f"record {index}: bad magic 0x{magic:08x} (not RecordIO)")
        cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
        data = stream.read(length)
        if len(data) < length:
            raise ValueError(f"record {index}: truncated payload")
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
        except ValueError as exc:
            raise ValueError(f"record {i}: {exc}") from exc
        if "values" not in features:
            raise ValueError(f"record {i}: no feature named 'values'")
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
            raise ValueError(f"record {i}: {r.size} features, more than feature_dim={width}")
        X[i, : r.size] = r
    return X, (np.asarray(labels, dtype=np.float32) if have_label and labels else None)


def _measure(fn: Callable[[], object], seconds: float) -> float:
    """Calls of ``fn`` per second over about ``seconds`` (at least one call)."""
    calls = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        fn()
        calls += 1
        now = time.perf_counter()
        if now >= deadline:
            return calls / (now - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.recordio", description=__doc__)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--features", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds per measurement")
    parser.add_argument("--reps", type=int, default=5, help="alternating repetitions (median reported)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(args.rows, args.features)).astype(np.float32)
    y = rng.integers(0, 2, size=args.rows).astype(np.float32)
    data = recordio.encode_dense(X, y)
    readers: list[Callable[[], tuple[np.ndarray, np.ndarray | None]]] = [
        lambda: read_dense(io.BytesIO(data)),
        lambda: recordio.dense_batch(recordio.split_records(data)),
        lambda: training_recordio.read_dense(io.BytesIO(data)),
    ]
    for reader in readers:
        got_X, got_y = reader()
        assert np.array_equal(got_X, X) and got_y is not None and np.array_equal(got_y, y)
    hand: list[float] = []
    proto: list[float] = []
    training: list[float] = []
    for _ in range(args.reps):
        hand.append(_measure(readers[0], args.seconds))
        proto.append(_measure(readers[1], args.seconds))
        training.append(_measure(readers[2], args.seconds))
    hand_rate, proto_rate = statistics.median(hand), statistics.median(proto)
    training_rate = statistics.median(training)
    print(f"# bench.recordio: decode {args.rows} x {args.features} dense float32 records with labels")
    print(f"- hand-written wire parser: {hand_rate:.2f} batches/s ({hand_rate * args.rows:,.0f} records/s)")
    print(
        f"- protobuf package (common.recordio): {proto_rate:.2f} batches/s "
        f"({proto_rate * args.rows:,.0f} records/s)"
    )
    print(
        f"- training's reader (training.recordio.read_dense: the first record parsed by protobuf, the others "
        f"compared to it and read as one array): {training_rate:.2f} batches/s"
    )
    print(f"- protobuf record by record / hand-written: {proto_rate / hand_rate:.2f} (goal >= 0.8)")
    print(f"- training's reader / hand-written: {training_rate / hand_rate:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
