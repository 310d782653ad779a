"""Pure parts of the batch engine: JSONPath filters, record splitting, request validation, progress text."""

from __future__ import annotations

import gzip
import io
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batch.errors import RecordError, TransformRequestError
from batch.jsonpath import parse_jsonpath
from batch.records import GunzipStream, LineRange, block_records, clean_block, iter_framed
from batch.request import parse_request
from batch.transform import parse_csv_line, serialize

# -- JSONPath ------------------------------------------------------------------------------------------------

ROW = ["id7", "1.5", "2.5", "3.5", "label"]
OBJ = {"id": 7, "features": [1, 2, 3], "meta": {"source": "s3", "tags": ["a", "b"]}, "b.c": 1}

JSONPATH_CASES = [
    ("$", ROW, ROW),
    ("$[0]", ROW, "id7"),
    ("$[-1]", ROW, "label"),
    ("$[1:]", ROW, ["1.5", "2.5", "3.5", "label"]),
    ("$[1:4]", ROW, ["1.5", "2.5", "3.5"]),
    ("$[:2]", ROW, ["id7", "1.5"]),
    ("$[-2:]", ROW, ["3.5", "label"]),
    ("$[0,-1]", ROW, ["id7", "label"]),
    ("$[0, 2, 3]", ROW, ["id7", "2.5", "3.5"]),
    ("$[*]", ROW, ROW),
    ("$.id", OBJ, 7),
    ("$.features", OBJ, [1, 2, 3]),
    ("$.features[1:]", OBJ, [2, 3]),
    ("$.meta.source", OBJ, "s3"),
    ("$['id','features']", OBJ, {"id": 7, "features": [1, 2, 3]}),
    ('$["id"]', OBJ, 7),
    ("$['b.c']", OBJ, 1),
    ("$.meta.tags[0]", OBJ, "a"),
    ("$.*", {"a": 1, "b": 2}, [1, 2]),
]


@pytest.mark.parametrize(("path", "value", "expected"), JSONPATH_CASES, ids=[c[0] for c in JSONPATH_CASES])
def test_jsonpath_selects(path: str, value: Any, expected: Any) -> None:
    assert parse_jsonpath(path).apply(value) == expected


@pytest.mark.parametrize("path", ["", "id", "$.", "$[", "$[1", "$[[0]]", "$.f.['a','b.c']", "$x", "$['a',]"])
def test_jsonpath_outside_the_subset_is_refused(path: str) -> None:
    with pytest.raises(ValueError):
        parse_jsonpath(path)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("$[9]", ROW, "out of range"),
        ("$.missing", OBJ, "no member"),
        ("$.id", ROW, "needs an object"),
        ("$[0]", OBJ, "needs an array"),
    ],
)
def test_jsonpath_shape_mismatch_says_why(path: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_jsonpath(path).apply(value)


def test_csv_fields_round_trip_with_quotes() -> None:
    fields = parse_csv_line(b'1,"a,b","say ""hi""",x')
    assert fields == ["1", "a,b", 'say "hi"', "x"]
    assert parse_csv_line(serialize(fields, "csv")) == fields
    assert serialize([1, 2.5, None, True], "csv") == b"1,2.5,,true"


# -- record splitting --------------------------------------------------------------------------------------


def _expected_records(data: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    for line in data.split(b"\n"):
        if line:
            out.append((pos, line))
        pos += len(line) + 1
    return out


@settings(max_examples=150, deadline=None)
@given(
    lines=st.lists(st.binary(min_size=0, max_size=12).map(lambda b: b.replace(b"\n", b"x")), max_size=30),
    trailing=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
    read_size=st.integers(min_value=1, max_value=17),
    block=st.integers(min_value=14, max_value=64),
)
def test_byte_ranges_own_every_record_exactly_once(
    lines: list[bytes], trailing: bool, cuts: list[int], read_size: int, block: int
) -> None:
    data = b"\n".join(lines) + (b"\n" if trailing else b"")
    bounds = sorted({0, len(data), *[c for c in cuts if c < len(data)]})
    records, blocked = [], []
    for start, end in zip(bounds, bounds[1:], strict=False):
        for sink, kind in ((records, "records"), (blocked, "blocks")):
            stream = io.BytesIO(data)
            stream.seek(max(0, start - 1))
            part = LineRange(
                stream,
                source="mem",
                start=start,
                end=end if end < len(data) else None,
                max_record=100,
                read_size=read_size,
            )
            if kind == "records":
                sink.extend(part.records())
            else:
                for offset, chunk in part.blocks(block):
                    assert len(chunk) <= block and chunk.endswith(b"\n")
                    sink.extend(block_records(offset, chunk))
    assert records == _expected_records(data)
    assert blocked == _expected_records(data)


def test_record_larger_than_the_payload_fails_naming_its_offset() -> None:
    data = b"short\n" + b"x" * 50 + b"\nend\n"
    part = LineRange(io.BytesIO(data), source="mem", start=0, end=None, max_record=20, read_size=8)
    with pytest.raises(RecordError) as info:
        list(part.blocks(20))
    assert info.value.offset == 6


def test_clean_block_drops_empty_lines() -> None:
    assert clean_block(b"a\n\nb\n") == (b"a\nb\n", 2)
    assert clean_block(b"\n\n") == (b"", 0)
    assert clean_block(b"a\nb\n") == (b"a\nb\n", 2)


def test_gunzip_stream_reads_concatenated_members() -> None:
    raw = gzip.compress(b"one\ntwo\n") + gzip.compress(b"three\n")
    stream = GunzipStream(io.BytesIO(raw), "mem")
    out = b""
    while chunk := stream.read(3):
        out += chunk
    assert out == b"one\ntwo\nthree\n"


def test_gunzip_stream_rejects_garbage() -> None:
    from batch.errors import InputError

    with pytest.raises(InputError, match="gzip"):
        GunzipStream(io.BytesIO(b"not gzip at all"), "mem").read(10)


def test_recordio_framing_keeps_padding_only_for_multi_record() -> None:
    def record(payload: bytes) -> bytes:
        pad = (4 - len(payload) % 4) % 4
        return struct.pack("<II", 0xCED7230A, len(payload)) + payload + b"\0" * pad

    data = record(b"abcde") + record(b"xyz1")
    got = list(iter_framed(io.BytesIO(data), "RecordIO", "mem", 100))
    assert [(o, s, u) for o, s, u in got] == [
        (0, record(b"abcde"), record(b"abcde")[:13]),
        (16, record(b"xyz1"), record(b"xyz1")),
    ]
    with pytest.raises(RecordError, match="magic"):
        list(iter_framed(io.BytesIO(b"\0" * 8), "RecordIO", "mem", 100))


# -- request validation --------------------------------------------------------------------------------------


def _req(**extra: Any) -> dict[str, Any]:
    tin = {
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/in"}},
        "ContentType": "text/csv",
        "SplitType": "Line",
    }
    tin.update(extra.pop("tin", {}))
    tout = {"S3OutputPath": "s3://b/out", "AssembleWith": "Line"}
    tout.update(extra.pop("tout", {}))
    return {
        "TransformJobName": "j",
        "ModelName": "m",
        "TransformInput": tin,
        "TransformOutput": tout,
        **extra,
    }


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (_req(tin={"SplitType": "Words"}), "SplitType"),
        (_req(BatchStrategy="Everything"), "BatchStrategy"),
        (_req(MaxPayloadInMB=101), "MaxPayloadInMB"),
        (_req(MaxPayloadInMB=50, MaxConcurrentTransforms=4), "must not exceed 100"),
        (_req(ModelClientConfig={"InvocationsMaxRetries": 4}), "InvocationsMaxRetries"),
        (_req(ModelClientConfig={"InvocationsTimeoutInSeconds": 0}), "InvocationsTimeoutInSeconds"),
        (_req(DataProcessing={"InputFilter": "$[[1]]"}), "InputFilter"),
        (_req(DataProcessing={"JoinSource": "Output"}), "JoinSource"),
        (_req(DataProcessing={"JoinSource": "Input"}, tout={"AssembleWith": "None"}), "AssembleWith 'Line'"),
        (
            _req(DataProcessing={"InputFilter": "$[1:]"}, tin={"ContentType": "application/x-npy"}),
            "CSV or JSON",
        ),
        (_req(tout={"S3OutputPath": "ftp://x/y"}), "S3OutputPath"),
        (_req(tout={"S3OutputPath": "s3:///out"}), "'TransformOutput.S3OutputPath' has no bucket"),
        (
            _req(tin={"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://"}}}),
            "has no bucket",
        ),
        (_req(Environment={f"K{i}": "v" for i in range(17)}), "16 entries"),
    ],
)
def test_invalid_requests_name_the_member(request_: dict[str, Any], message: str) -> None:
    with pytest.raises(TransformRequestError, match=message):
        parse_request(request_)


def test_execution_parameters_fill_only_what_the_job_left_unset() -> None:
    spec = parse_request(_req(MaxPayloadInMB=2))
    filled = spec.with_execution_parameters(
        {"MaxConcurrentTransforms": 4, "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": 6}
    ).resolved()
    assert (filled.max_concurrent, filled.batch_strategy, filled.max_payload_mb) == (4, "MultiRecord", 2)
    mms = spec.with_execution_parameters({"MAX_CONCURRENT_TRANSFORMS": 3, "BATCH_STRATEGY": "SINGLE_RECORD"})
    assert (mms.max_concurrent, mms.batch_strategy) == (3, "SingleRecord")
    defaults = parse_request(_req()).resolved()
    assert (defaults.max_concurrent, defaults.batch_strategy, defaults.max_payload_mb) == (
        1,
        "SingleRecord",
        6,
    )
    assert parse_request(_req()).timeout_s == 600 and parse_request(_req()).max_retries == 3
