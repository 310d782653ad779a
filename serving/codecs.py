"""Request decoders and response encoders (CSV, JSON, JSON Lines, NPY, RecordIO-protobuf, libsvm), tuned for
small latency.

Decoders turn a body into a ``numpy`` array (or ``{input name: array}`` for ``{"inputs": {...}}``
JSON); every malformed body raises :class:`~serving.errors.BadRequestError` with a message that says
what is wrong. Encoders turn arrays / plain records into bytes. Pure functions, no I/O.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.lib.format as npformat
import orjson

from common import recordio
from serving import contract
from serving.errors import BadRequestError, NotAcceptableError, UnsupportedMediaTypeError

Batch = np.ndarray | dict[str, np.ndarray]

_NUMPY_OPT = orjson.OPT_SERIALIZE_NUMPY
#: What a CSV table of plain decimal numbers consists of (see :func:`_decode_csv_as_json`).
_PLAIN_NUMBER_BYTES = b"0123456789+-.eE, \t\n"
_JSON_FLOATS = (np.float32, np.float64)
_NEGATIVE_ZERO_INTEGER = re.compile(rb"-0(?![.\deE])")


# ---------------------------------------------------------------------------------------------
# decoding


def decode(body: bytes, content_type: str, dtype: Any = np.float32, width: int | None = None) -> Batch:
    """Decode ``body`` of (normalised) ``content_type`` into an array or a dict of named arrays.

    ``width`` is the model's feature count when it has one (a single ``[N, width]`` input): the sparse
    formats (RecordIO-protobuf with keys, libsvm) fill their rows to it and refuse features beyond it.
    """
    if content_type == contract.CSV:
        return decode_csv(body, dtype)
    if content_type == contract.JSON:
        return decode_json(body, dtype)
    if content_type == contract.NPY:
        return decode_npy(body)
    if content_type == contract.JSONLINES:
        return decode_jsonlines(body, dtype)
    if content_type == contract.RECORDIO:
        return decode_recordio(body, dtype, width)
    if content_type == contract.LIBSVM:
        return decode_libsvm(body, dtype, width)
    raise UnsupportedMediaTypeError(
        f"unsupported Content-Type {content_type or '(none)'!r}; use one of {', '.join(contract.DECODABLE)}"
    )


def decode_csv(body: bytes, dtype: Any = np.float32) -> np.ndarray:
    """Rows of comma-separated numbers, no header, one record per line; empty fields are NaN."""
    text = body.strip()
    if not text:
        raise BadRequestError("empty CSV body")
    if b"\r" in text:
        text = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    first_end = text.find(b"\n")
    if first_end < 0:  # one record: the common real-time request
        fields = text.split(b",")
        try:
            return np.array(fields, dtype=dtype).reshape(1, len(fields))
        except (ValueError, TypeError):
            return _decode_csv_slow(text, dtype, len(fields))
    if dtype in _JSON_FLOATS and not text.translate(None, _PLAIN_NUMBER_BYTES):
        table = _decode_csv_as_json(text, dtype)
        if table is not None:
            return table
    n_cols = text[:first_end].count(b",") + 1
    n_rows = text.count(b"\n") + 1
    # each line break becomes the first character of the next line's first field; the table is
    # rectangular when every break sits in a field at a multiple of the first line's field count
    # (blank lines and ragged rows take the careful path, which skips the former and names the latter)
    fields = text.replace(b"\n", b",\n").split(b",")
    if len(fields) == n_rows * n_cols and b"".join(fields[n_cols::n_cols]).count(b"\n") == n_rows - 1:
        try:
            # numpy parses byte strings (leading whitespace allowed) straight to numbers; far
            # cheaper than genfromtxt/loadtxt
            flat = np.array(fields, dtype=dtype)
        except (ValueError, TypeError):
            pass
        else:
            return flat.reshape(n_rows, n_cols)
    return _decode_csv_slow(text, dtype, n_cols)


def decode_csv_records(records: Sequence[bytes], dtype: Any = np.float32) -> np.ndarray | None:
    """Several one-line CSV records (the stripped bodies of concurrent real-time requests) as the
    rows of one table, one row per record: what :func:`decode_csv` reads from them joined by
    newlines. None when some record is empty or not one line (it would not be one row); a record
    that is not numbers raises :func:`decode_csv`'s error."""
    text = b"\n".join(records)
    if dtype in _JSON_FLOATS and not text.translate(None, _PLAIN_NUMBER_BYTES):  # no "\r" either
        table = _decode_csv_as_json(text, dtype)
        # one row per record: a record with a line break adds rows, an empty one makes the JSON ragged
        # (or, when all are, the table empty)
        if table is not None and len(table) == len(records) and table.shape[1]:
            return table
    if not all(records) or text.count(b"\n") != len(records) - 1 or b"\r" in text:
        return None
    return decode_csv(text, dtype)


def _decode_csv_as_json(text: bytes, dtype: Any) -> np.ndarray | None:
    """A rectangular table of plain decimal numbers, read as JSON rows (orjson and numpy read
    numbers from it about twice as fast as numpy parses byte strings); None for anything else — an
    empty field, a blank line, a ragged row, ``+1``, ``1.``, ``.5``, ``-0`` (JSON's integer 0) —
    which the paths below read or refuse with the same values and messages."""
    negative_zeros = text.count(b"-0")  # "-0." is the common case, the regex looks closer
    if negative_zeros and negative_zeros != text.count(b"-0.") and _NEGATIVE_ZERO_INTEGER.search(text):
        return None
    try:
        rows = orjson.loads(b"[[" + text.replace(b"\n", b"],[") + b"]]")
        table = np.array(rows, dtype=dtype)
    except (orjson.JSONDecodeError, ValueError):  # not JSON, or rows of different lengths
        return None
    return table if table.ndim == 2 else None


def _decode_csv_slow(text: bytes, dtype: Any, n_cols: int) -> np.ndarray:
    """The careful path: empty fields → NaN, blank lines skipped, errors name the row and field."""
    rows: list[list[float]] = []
    for line_no, line in enumerate(text.split(b"\n"), start=1):
        if not line.strip():
            continue
        parts = line.split(b",")
        if len(parts) != n_cols:
            raise BadRequestError(f"CSV row {line_no} has {len(parts)} fields, expected {n_cols}")
        row: list[float] = []
        for col, part in enumerate(parts, start=1):
            part = part.strip()
            if not part:
                row.append(float("nan"))
                continue
            try:
                row.append(float(part))
            except ValueError:
                shown = part[:40].decode("utf-8", "replace")
                raise BadRequestError(f"CSV row {line_no}, column {col}: {shown!r} is not a number") from None
        rows.append(row)
    if not rows:
        raise BadRequestError("empty CSV body")
    try:
        return np.array(rows, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadRequestError(f"CSV values do not fit {np.dtype(dtype).name}: {exc}") from None


def _json_loads(body: bytes, what: str = "JSON body") -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"malformed {what}: {exc}") from None


def _to_array(data: Any, dtype: Any, what: str) -> np.ndarray:
    if isinstance(data, list) and data and isinstance(data[0], dict):
        # linear-learner style records: [{"features": [...]}, ...]
        try:
            data = [record["features"] for record in data]
        except (KeyError, TypeError):
            raise BadRequestError(f"{what}: records must be arrays or objects with 'features'") from None
    if isinstance(data, (str, bytes, bool)) or data is None:
        raise BadRequestError(f"{what} must be an array of numbers")
    try:
        array = np.asarray(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError):
        raise BadRequestError(f"{what} is not a rectangular array of numbers") from None
    if array.ndim == 0:
        raise BadRequestError(f"{what} must be an array, got a scalar")
    if array.shape[0] == 0:
        raise BadRequestError(f"{what} has no records")
    return array


def decode_json(body: bytes, dtype: Any = np.float32) -> Batch:
    """``{"instances": [...]}``, a bare list, ``{"features": [...]}`` or ``{"inputs": {name: array}}``."""
    obj = _json_loads(body)
    if isinstance(obj, list):
        return _to_array(obj, dtype, "JSON body")
    if isinstance(obj, dict):
        if "instances" in obj:
            return _to_array(obj["instances"], dtype, "'instances'")
        if "inputs" in obj:
            inputs = obj["inputs"]
            if isinstance(inputs, dict):
                if not inputs:
                    raise BadRequestError("'inputs' is empty")
                return {
                    str(name): _to_array(value, None, f"input {name!r}") for name, value in inputs.items()
                }
            return _to_array(inputs, dtype, "'inputs'")
        if "features" in obj:
            return _to_array([obj["features"]], dtype, "'features'")
    raise BadRequestError(
        'JSON body must be a list, {"instances": [...]}, {"features": [...]} or {"inputs": {name: array}}'
    )


def decode_jsonlines(body: bytes, dtype: Any = np.float32) -> np.ndarray:
    """One record per line: an array of numbers, or ``{"features": [...]}``/``{"instances": [[...]]}``."""
    rows: list[Any] = []
    for line_no, line in enumerate(body.split(b"\n"), start=1):
        if not line.strip():
            continue
        record = _json_loads(line, f"JSON Lines record on line {line_no}")
        if isinstance(record, dict):
            if "features" in record:
                rows.append(record["features"])
            elif "instances" in record and isinstance(record["instances"], list):
                rows.extend(record["instances"])
            else:
                raise BadRequestError(f"JSON Lines line {line_no}: object without 'features' or 'instances'")
        else:
            rows.append(record)
    if not rows:
        raise BadRequestError("empty JSON Lines body")
    return _to_array(rows, dtype, "JSON Lines records")


def decode_recordio(body: bytes, dtype: Any = np.float32, width: int | None = None) -> np.ndarray:
    """RecordIO-framed ``Record`` protobufs (``sagemaker.amazon.common``'s ``RecordSerializer``), one row
    per record from ``features["values"]``: dense, or sparse (``keys``, ``shape``) with zeros where no
    key is. Float32, Float64 and Int32 tensors are read (the SDK writes what the array's dtype is); a
    label, if any, is ignored."""
    if not body:
        raise BadRequestError("empty RecordIO-protobuf body")
    try:
        table = recordio.dense_uniform(body, width)  # the SDK's usual request, without a loop
        if table is None:
            table, _ = recordio.dense_batch(recordio.split_records(body), width)
    except recordio.RecordIOError as exc:
        raise BadRequestError(f"malformed RecordIO-protobuf body: {exc}") from None
    return table if dtype in (None, np.float32) else _cast_table(table, dtype)


def _cast_table(table: np.ndarray, dtype: Any) -> np.ndarray:
    try:
        return table.astype(dtype)
    except (ValueError, TypeError) as exc:
        raise BadRequestError(f"values do not fit {np.dtype(dtype).name}: {exc}") from None


def decode_libsvm(body: bytes, dtype: Any = np.float32, width: int | None = None) -> np.ndarray:
    """``label index:value ...`` lines as xgboost reads them: the leading label (``label[:weight]``) is
    ignored, indices are 0-based column numbers (dmlc-core's ``indexing_mode`` 0, the default of the
    xgboost versions SageMaker's images run), ``qid:`` is skipped, ``#`` starts a comment, and a feature
    a line does not name is missing (NaN), as in the DMatrix xgboost's predictor builds from libsvm.
    The rows are ``width`` wide (the model's), or as wide as the largest index otherwise; an index at or
    beyond the model's width is refused."""
    rows: list[tuple[list[int], list[float]]] = []
    top = -1
    for line_no, raw in enumerate(body.split(b"\n"), start=1):
        tokens = raw.split(b"#", 1)[0].split()
        if not tokens:
            continue
        indices: list[int] = []
        values: list[float] = []
        for token in tokens[1:]:
            index, sep, value = token.partition(b":")
            if index == b"qid":
                continue
            try:
                if not sep or not index.isdigit():
                    raise ValueError
                column, number = int(index), float(value)
            except ValueError:
                shown = token[:40].decode("utf-8", "replace")
                raise BadRequestError(
                    f"libsvm line {line_no}: {shown!r} is not index:value (a 0-based feature index, a number)"
                ) from None
            if width is not None and column >= width:
                raise BadRequestError(
                    f"libsvm line {line_no}: feature index {column} is beyond the model's {width} features "
                    f"(indices are 0-based: 0..{width - 1})"
                )
            indices.append(column)
            values.append(number)
        if indices:
            top = max(top, max(indices))
        rows.append((indices, values))
    if not rows:
        raise BadRequestError("empty libsvm body")
    if width is None and top >= recordio.MAX_WIDTH:  # a few bytes must not allocate gigabytes
        raise BadRequestError(
            f"libsvm feature index {top} is beyond the {recordio.MAX_WIDTH:,} features this server reads"
        )
    table = np.full((len(rows), width if width is not None else top + 1), np.nan, dtype=np.float32)
    for row, (indices, values) in enumerate(rows):
        if indices:
            table[row, indices] = values
    if table.shape[1] == 0:
        raise BadRequestError("libsvm body names no features")
    return table if dtype in (None, np.float32) else _cast_table(table, dtype)


#: The header ``numpy.save`` writes for a plain C-ordered array (format 1.0): the fast path below
#: reads it with this expression instead of numpy's literal_eval of the header dict (≈ 100 µs of a
#: small request); anything else goes through ``np.load``.
_NPY_PLAIN = re.compile(
    rb"\x93NUMPY\x01\x00..\{'descr': '([<>|=][biuf][1248])', 'fortran_order': False, 'shape': "
    rb"\(((?:\d+, )*\d*|\d+,)\), \} *\n",
    re.DOTALL,
)


def decode_npy(body: bytes) -> np.ndarray:
    """A ``.npy`` file (``numpy.save``); pickled object arrays are refused."""
    if not body:
        raise BadRequestError("empty NPY body")
    if not body.startswith(b"\x93NUMPY"):  # np.load would take it for a pickle and say so
        raise BadRequestError(
            "malformed NPY body: not a .npy file (numpy.save output starts with \\x93NUMPY)"
        )
    plain = _NPY_PLAIN.match(body)
    if plain is not None and plain.end() == 10 + int.from_bytes(body[8:10], "little"):
        dtype = np.dtype(plain.group(1).decode())
        shape = tuple(int(d) for d in plain.group(2).split(b",") if d.strip())
        if len(body) - plain.end() == math.prod(shape) * dtype.itemsize:
            return np.frombuffer(body, dtype=dtype, offset=plain.end()).reshape(shape).copy()
    stream = io.BytesIO(body)
    try:
        # the header alone first: np.load allocates what the header declares before it reads the data,
        # so a 100-byte body declaring 10^9 rows would ask for gigabytes
        version = npformat.read_magic(stream)
        read_header = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
        shape, _, dtype = read_header(stream)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        raise BadRequestError(f"malformed NPY body: {exc}") from None
    if dtype.hasobject:
        raise BadRequestError("malformed NPY body: object arrays (pickles) are not accepted")
    declared = math.prod(shape) * dtype.itemsize
    if declared > len(body) - stream.tell():  # a tail is ignored, as numpy does
        raise BadRequestError(
            f"malformed NPY body: the header declares shape {tuple(shape)} of {dtype.str} "
            f"({declared} bytes) but only {len(body) - stream.tell()} bytes follow it"
        )
    try:
        return np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BadRequestError(f"malformed NPY body: {exc}") from None


# ---------------------------------------------------------------------------------------------
# content negotiation


_ACCEPT_CACHE: dict[tuple[str, str, tuple[str, ...]], str] = {}


def choose_accept(accept: str | None, default: str, offered: Sequence[str] = contract.ENCODABLE) -> str:
    """Pick the response type for an ``Accept`` header (q-values honoured, ``*/*`` → ``default``)."""
    if not accept or accept.strip() in ("", contract.ANY):
        return default
    key = (accept, default, tuple(offered))
    cached = _ACCEPT_CACHE.get(key)
    if cached is not None:
        return cached
    chosen = _choose_accept(accept, default, offered)
    if len(_ACCEPT_CACHE) < 1024:  # bounded: a client cannot grow it without limit
        _ACCEPT_CACHE[key] = chosen
    return chosen


def _choose_accept(accept: str, default: str, offered: Sequence[str]) -> str:
    candidates: list[tuple[float, int, str]] = []
    for index, item in enumerate(accept.split(",")):
        media, _, params = item.partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            candidates.append((-quality, index, media.strip().lower()))
    for _, _, media in sorted(candidates):
        if media == contract.ANY:
            return default
        if media.endswith("/*"):
            prefix = media[:-1]
            if default.startswith(prefix):
                return default
            for option in offered:
                if option.startswith(prefix):
                    return option
            continue
        media = contract.CONTENT_TYPE_ALIASES.get(media, media)
        if media in offered:
            return media
    raise NotAcceptableError(f"cannot answer Accept {accept!r}; this model offers {', '.join(offered)}")


# ---------------------------------------------------------------------------------------------
# encoding


def encode_json(obj: Any) -> bytes:
    """JSON via orjson (numpy arrays serialised natively)."""
    return orjson.dumps(obj, option=_NUMPY_OPT, default=_json_default)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def encode_jsonlines(records: Sequence[Any]) -> bytes:
    """One JSON document per record, newline-terminated."""
    if not len(records):
        return b""
    return b"\n".join(encode_json(record) for record in records) + b"\n"


def encode_recordio(records: Sequence[Any]) -> bytes:
    """Answer records (``{"score": ..., "predicted_label": ...}``) as RecordIO-framed ``Record`` protobufs
    whose ``label`` map holds each member as a float32 tensor, as linear-learner answers
    ``application/x-recordio-protobuf`` (the SDK's ``RecordDeserializer`` reads them)."""
    if any(not isinstance(record, dict) for record in records):
        raise NotAcceptableError(
            "application/x-recordio-protobuf answers need named results (score, predicted_label)"
        )
    try:
        return recordio.encode_label_records(records)
    except (TypeError, ValueError) as exc:
        raise NotAcceptableError(f"the answer cannot be written as RecordIO-protobuf: {exc}") from None


def _array_text(array: np.ndarray) -> bytes:
    """A contiguous numeric array as orjson text (shortest round-trip floats)."""
    if array.dtype.kind == "f" and array.dtype.itemsize < 4:
        array = array.astype(np.float32)
    return orjson.dumps(np.ascontiguousarray(array), option=_NUMPY_OPT, default=_json_default)


def encode_csv(data: Any) -> bytes:
    """One line per record: a 1-D array gives one value per line, a 2-D array comma-joined rows."""
    if isinstance(data, np.ndarray) and data.dtype.kind in "fiub":
        if data.ndim == 0:
            data = data.reshape(1)
        if data.ndim == 1:
            if data.size == 0:
                return b""
            return _array_text(data)[1:-1].replace(b",", b"\n") + b"\n"
        if data.ndim == 2:
            if data.size == 0:
                return b"\n" * data.shape[0]
            return _array_text(data)[2:-2].replace(b"],[", b"\n") + b"\n"
        data = data.reshape(data.shape[0], -1)
        return encode_csv(data)
    if isinstance(data, np.ndarray):
        data = data.tolist()
    lines = []
    for row in data:
        if isinstance(row, (list, tuple, np.ndarray)):
            lines.append(",".join(_csv_field(value) for value in row))
        else:
            lines.append(_csv_field(row))
    return ("\n".join(lines) + "\n").encode() if lines else b""


def _csv_field(value: Any) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    if any(ch in text for ch in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def encode_npy(array: Any) -> bytes:
    """``numpy.save`` bytes of ``array`` (never pickled)."""
    array = np.asarray(array)
    if array.dtype.kind in "biuf" and array.dtype.itemsize in (1, 2, 4, 8):
        # numpy.save's format 1.0 header for a C-ordered array, byte for byte, without its repr of a
        # dict and its checks (the tests compare both)
        shape = "(" + "".join(f"{d}, " for d in array.shape)[:-2] + ("," if array.ndim == 1 else "") + ")"
        header = f"{{'descr': '{array.dtype.str}', 'fortran_order': False, 'shape': {shape}, }}"
        head = header + " " * (-(10 + len(header) + 1) % 64) + "\n"  # data aligned to 64 bytes
        if len(head) < 65536:
            return (
                b"\x93NUMPY\x01\x00"
                + len(head).to_bytes(2, "little")
                + head.encode("latin-1")
                + np.ascontiguousarray(array).tobytes()
            )
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
