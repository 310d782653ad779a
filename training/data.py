"""Reading a training channel: CSV (label first, no header), libsvm, Parquet, RecordIO-protobuf.

A channel is either a directory of files (File/FastFile mode) or the FIFO ``<channel>_<epoch>``
(Pipe mode). Malformed data raises :class:`training.errors.DataError` naming the file and line.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

from training.environment import TrainingEnvironment
from training.errors import DataError, UserError

Format = Literal["csv", "libsvm", "parquet", "recordio"]

_CONTENT_TYPES: dict[str, Format] = {
    "text/csv": "csv",
    "csv": "csv",
    "text/x-csv": "csv",
    "text/libsvm": "libsvm",
    "libsvm": "libsvm",
    "text/x-libsvm": "libsvm",
    "application/x-parquet": "parquet",
    "application/parquet": "parquet",
    "parquet": "parquet",
    "application/x-recordio-protobuf": "recordio",
    "recordio-protobuf": "recordio",
    "application/x-recordio": "recordio",
}


@dataclass
class Dataset:
    """Features, labels and optional instance weights of one channel."""

    X: Any  # float32 ndarray [N, D] or scipy CSR matrix
    y: np.ndarray
    weights: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return int(self.X.shape[0])

    @property
    def dense(self) -> np.ndarray:
        """Features as a dense float32 array (absent libsvm entries become 0)."""
        if isinstance(self.X, np.ndarray):
            return self.X
        return np.asarray(self.X.toarray(), dtype=np.float32)


def data_format(content_type: str | None, default: Format, channel: str) -> Format:
    """Map a channel's ContentType (parameters like ``;label_size=1`` ignored) to a reader."""
    if not content_type:
        return default
    base = content_type.split(";", 1)[0].strip().lower()
    if base not in _CONTENT_TYPES:
        raise UserError(
            f"channel {channel!r}: ContentType {content_type!r} is not supported "
            f"(text/csv, text/libsvm, application/x-parquet, application/x-recordio-protobuf)"
        )
    return _CONTENT_TYPES[base]


def channel_files(env: TrainingEnvironment, channel: str) -> list[Path]:
    """Data files of a File/FastFile channel, sorted, hidden files skipped."""
    base = env.channel_dir(channel)
    if not base.exists():
        raise UserError(f"channel {channel!r}: {base} does not exist")
    files = [
        p
        for p in sorted(base.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(base).parts)
    ]
    return files


def read_channel(
    env: TrainingEnvironment,
    channel: str,
    *,
    default: Format,
    csv_weights: bool = False,
    feature_dim: int | None = None,
    epoch: int = 0,
    labelled: bool = True,
) -> Dataset:
    """Read a whole channel (File mode: all files; Pipe mode: the FIFO of ``epoch``).

    ``labelled=False`` (the unsupervised built-ins, KMeans and PCA): CSV has no label column, RecordIO
    records may carry none, and ``y`` is all zeros."""
    fmt = data_format(env.content_type(channel), default, channel)
    parts: list[Dataset] = []
    if env.input_mode(channel) == "Pipe":
        fifo = env.pipe_path(channel, epoch)
        with open(fifo, "rb") as stream:
            payload = stream.read()
        if payload:
            parts.append(
                _read_bytes(payload, fmt, f"{channel}_{epoch} (pipe)", csv_weights, feature_dim, labelled)
            )
    else:
        for path in channel_files(env, channel):
            if path.stat().st_size == 0:
                continue
            parts.append(_read_path(path, fmt, csv_weights, feature_dim, labelled))
    if not parts:
        raise UserError(f"channel {channel!r} has no data")
    return _concat(parts, channel)


def _concat(parts: list[Dataset], channel: str) -> Dataset:
    if len(parts) == 1:
        return parts[0]
    if all(isinstance(p.X, np.ndarray) for p in parts):
        widths = {p.X.shape[1] for p in parts}
        if len(widths) > 1:
            raise UserError(f"channel {channel!r}: files have different numbers of columns {sorted(widths)}")
        X: Any = np.concatenate([p.X for p in parts])
    else:
        import scipy.sparse as sp

        width = max(p.X.shape[1] for p in parts)
        X = sp.vstack(
            [
                sp.csr_matrix(p.X, shape=(p.X.shape[0], width))
                if p.X.shape[1] != width
                else sp.csr_matrix(p.X)
                for p in parts
            ]
        ).tocsr()
    y = np.concatenate([p.y for p in parts])
    w = np.concatenate([p.weights for p in parts]) if all(p.weights is not None for p in parts) else None
    return Dataset(X, y, w)


def _read_path(
    path: Path, fmt: Format, csv_weights: bool, feature_dim: int | None, labelled: bool = True
) -> Dataset:
    if fmt == "csv":
        return read_csv(path, str(path), csv_weights, labelled)
    if fmt == "parquet":
        return read_parquet(path, str(path))
    with open(path, "rb") as stream:
        if fmt == "recordio":
            return _read_recordio(stream, str(path), feature_dim, labelled)
        return read_libsvm(stream, str(path))


def _read_bytes(
    payload: bytes, fmt: Format, name: str, csv_weights: bool, feature_dim: int | None, labelled: bool = True
) -> Dataset:
    if fmt == "csv":
        return read_csv(payload, name, csv_weights, labelled)
    if fmt == "parquet":
        return read_parquet(io.BytesIO(payload), name)
    if fmt == "recordio":
        return _read_recordio(io.BytesIO(payload), name, feature_dim, labelled)
    return read_libsvm(io.BytesIO(payload), name)


# -- CSV -----------------------------------------------------------------------------------------
def read_csv(source: Path | bytes, name: str, csv_weights: bool = False, labelled: bool = True) -> Dataset:
    """Label-first CSV without header (weight second with ``csv_weights``; every column a feature when
    not ``labelled``); parsed by pyarrow."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    if isinstance(source, bytes):
        first = source.split(b"\n", 1)[0]
    else:
        with open(source, "rb") as f:
            first = f.readline()
    ncol = first.count(b",") + 1
    min_cols = 3 if csv_weights else 2
    if not first.strip():
        raise DataError(f"{name}:1", "empty first line")
    if labelled and ncol < min_cols:
        raise DataError(
            f"{name}:1",
            f"expected a label{', a weight' if csv_weights else ''} and at least one feature column, "
            f"got {ncol} column(s)",
        )
    names = [f"c{i}" for i in range(ncol)]
    try:
        table = pacsv.read_csv(
            pa.BufferReader(source) if isinstance(source, bytes) else str(source),
            read_options=pacsv.ReadOptions(column_names=names, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(newlines_in_values=False),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.float32() for n in names}, strings_can_be_null=True
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise _locate_csv_error(source, name, ncol) or DataError(name, f"cannot parse CSV: {exc}") from exc
    arr = np.empty((table.num_rows, ncol), dtype=np.float32)
    for i, column in enumerate(table.columns):
        arr[:, i] = column.to_numpy(zero_copy_only=False)
    if not labelled:
        return Dataset(arr, np.zeros(len(arr), dtype=np.float32))
    y = arr[:, 0].copy()
    if np.isnan(y).any():
        row = int(np.flatnonzero(np.isnan(y))[0]) + 1
        raise DataError(f"{name}:{row}", "the label (first column) is empty")
    if csv_weights:
        return Dataset(np.ascontiguousarray(arr[:, 2:]), y, arr[:, 1].copy())
    return Dataset(np.ascontiguousarray(arr[:, 1:]), y)


def _locate_csv_error(source: Path | bytes, name: str, ncol: int) -> DataError | None:
    """Find the first malformed line so the message names it (pyarrow's does not always)."""
    stream: IO[bytes] = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115 - closed by the `with` below
    with stream:
        for lineno, raw in enumerate(stream, start=1):
            line = raw.strip()
            if not line:
                continue
            cells = line.split(b",")
            if len(cells) != ncol:
                return DataError(f"{name}:{lineno}", f"expected {ncol} columns, got {len(cells)}")
            for j, cell in enumerate(cells):
                if cell.strip() == b"":
                    continue
                try:
                    float(cell)
                except ValueError:
                    return DataError(
                        f"{name}:{lineno}",
                        f"column {j + 1}: {cell.decode('utf-8', 'replace')[:40]!r} is not a number",
                    )
    return None


# -- libsvm --------------------------------------------------------------------------------------
def read_libsvm(stream: IO[bytes], name: str) -> Dataset:
    """``label idx:value …`` lines (``qid:`` ignored) into a CSR matrix; indices are column numbers."""
    import scipy.sparse as sp

    labels: list[float] = []
    indptr = [0]
    indices: list[int] = []
    values: list[float] = []
    for lineno, raw in enumerate(stream, start=1):
        line = raw.split(b"#", 1)[0].strip()
        if not line:
            continue
        tokens = line.split()
        try:
            labels.append(float(tokens[0]))
        except ValueError:
            raise DataError(
                f"{name}:{lineno}", f"label {tokens[0].decode('utf-8', 'replace')[:40]!r} is not a number"
            ) from None
        for tok in tokens[1:]:
            idx, sep, val = tok.partition(b":")
            if not sep:
                raise DataError(
                    f"{name}:{lineno}", f"{tok.decode('utf-8', 'replace')[:40]!r} is not index:value"
                )
            if idx == b"qid":
                continue
            try:
                i, v = int(idx), float(val)
            except ValueError:
                raise DataError(
                    f"{name}:{lineno}", f"{tok.decode('utf-8', 'replace')[:40]!r} is not index:value"
                ) from None
            if i < 0:
                raise DataError(f"{name}:{lineno}", f"negative feature index {i}")
            indices.append(i)
            values.append(v)
        indptr.append(len(indices))
    if not labels:
        raise DataError(name, "no records")
    width = (max(indices) + 1) if indices else 1
    X = sp.csr_matrix(
        (
            np.asarray(values, dtype=np.float32),
            np.asarray(indices, dtype=np.int64),
            np.asarray(indptr, dtype=np.int64),
        ),
        shape=(len(labels), width),
    )
    return Dataset(X, np.asarray(labels, dtype=np.float32))


# -- Parquet -------------------------------------------------------------------------------------
def read_parquet(source: Path | IO[bytes], name: str) -> Dataset:
    """Parquet with the label in the first column and numeric features after it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(source)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(name, f"not a readable Parquet file: {exc}") from None
    if table.num_columns < 2:
        raise DataError(name, "a Parquet file needs a label column and at least one feature column")
    arr = np.empty((table.num_rows, table.num_columns), dtype=np.float32)
    for i, column in enumerate(table.columns):
        try:
            arr[:, i] = column.cast(pa.float32()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
            raise DataError(name, f"column {table.column_names[i]!r} is not numeric: {exc}") from None
    return Dataset(np.ascontiguousarray(arr[:, 1:]), arr[:, 0].copy())


# -- RecordIO ------------------------------------------------------------------------------------
def _read_recordio(stream: IO[bytes], name: str, feature_dim: int | None, labelled: bool = True) -> Dataset:
    from training.recordio import RecordIOError, read_dense

    try:
        X, y = read_dense(stream, feature_dim)
    except RecordIOError as exc:
        raise DataError(name, str(exc)) from None
    if y is None and not labelled:
        return Dataset(X, np.zeros(X.shape[0], dtype=np.float32))
    if y is None:
        raise DataError(name, "records carry no label (label['values'])")
    return Dataset(X, y)
