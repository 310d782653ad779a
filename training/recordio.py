"""``application/x-recordio-protobuf`` training channels, read and written with the shared codec
(:mod:`common.recordio`: the protobuf ``Record`` message of the SageMaker Python SDK in RecordIO framing).

Linear Learner's channels are records with ``features["values"]`` (dense, or sparse with ``keys`` and
``shape``) and ``label["values"]``, as the SDK's ``record_set()`` uploads them.
"""

from __future__ import annotations

from typing import IO

import numpy as np

from common.recordio import (
    MAGIC,
    RecordIOError,
    dense_batch,
    encode_dense,
    iter_records,
    read_uniform,
    split_records,
)

__all__ = ["MAGIC", "RecordIOError", "iter_records", "read_dense", "write_recordio"]


def read_dense(stream: IO[bytes], feature_dim: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a whole RecordIO-protobuf stream into ``X`` (float32 [N, D]) and ``y`` (float32 [N] or None).

    ``D`` is ``feature_dim`` when given (shorter records are zero-padded), else the longest record's width.
    Records that all look alike (``record_set()``'s: dense, one width, a label each) are read in one step.
    """
    data = stream.read()
    uniform = read_uniform(data, feature_dim)
    if uniform is not None:
        return uniform
    return dense_batch(split_records(data), feature_dim, pad=True)


def write_recordio(stream: IO[bytes], X: np.ndarray, y: np.ndarray | None = None) -> None:
    """Write rows of ``X`` (and labels ``y``) as dense float32 records, as the SDK's ``record_set()`` does."""
    stream.write(
        encode_dense(np.asarray(X, dtype=np.float32), None if y is None else np.asarray(y, dtype=np.float32))
    )
