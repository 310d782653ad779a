"""Data capture: record shape, encodings, key layout, sampling, validation and the background writer
against file:// and a real S3 API (moto server)."""

from __future__ import annotations

import base64
import json
import threading
from datetime import datetime, timezone
from pathlib import Path

import boto3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from selfmaker.features.capture.writer import (
    CapturePolicy,
    CaptureWriter,
    capture_key,
    capture_record,
    validate_data_capture_config,
)

WHEN = datetime(2026, 3, 7, 5, 9, 4, 123456, tzinfo=timezone.utc)


def policy(
    destination: str = "file:///tmp/x", mode: str = "InputAndOutput", **extra: object
) -> CapturePolicy:
    return CapturePolicy.from_request(
        {
            "DestinationS3Uri": destination,
            "InitialSamplingPercentage": 100,
            "CaptureOptions": [{"CaptureMode": mode}],
            **extra,
        }
    )


def test_record_shape_with_content_type_header() -> None:
    p = policy(
        CaptureContentTypeHeader={"CsvContentTypes": ["text/csv"], "JsonContentTypes": ["application/json"]}
    )
    record = capture_record(
        p,
        input_body=b"1,2\n",
        input_content_type="text/csv; charset=utf-8",
        output_body=b'{"predictions": [1]}',
        output_content_type="application/json",
        inference_time=WHEN,
        event_id="e-1",
        inference_id="inf-1",
    )
    assert record == {
        "captureData": {
            "endpointInput": {
                "observedContentType": "text/csv; charset=utf-8",
                "mode": "INPUT",
                "data": "1,2\n",
                "encoding": "CSV",
            },
            "endpointOutput": {
                "observedContentType": "application/json",
                "mode": "OUTPUT",
                "data": '{"predictions": [1]}',
                "encoding": "JSON",
            },
        },
        "eventMetadata": {"eventId": "e-1", "inferenceId": "inf-1", "inferenceTime": "2026-03-07T05:09:04Z"},
        "eventVersion": "0",
    }


@given(
    body=st.binary(max_size=200),
    content_type=st.sampled_from(["text/csv", "application/json", "application/x-npy", None]),
)
def test_without_header_everything_is_base64_and_round_trips(body: bytes, content_type: str | None) -> None:
    record = capture_record(
        policy(mode="Input"),
        input_body=body,
        input_content_type=content_type,
        output_body=b"x",
        output_content_type="text/csv",
        inference_time=WHEN,
    )
    assert set(record["captureData"]) == {"endpointInput"}
    payload = record["captureData"]["endpointInput"]
    assert payload["encoding"] == "BASE64" and base64.b64decode(payload["data"]) == body
    assert "inferenceId" not in record["eventMetadata"]


def test_undecodable_csv_falls_back_to_base64() -> None:
    p = policy(mode="Output", CaptureContentTypeHeader={"CsvContentTypes": ["text/csv"]})
    record = capture_record(
        p,
        input_body=b"",
        input_content_type="text/csv",
        output_body=b"\xff\xfe",
        output_content_type="text/csv",
        inference_time=WHEN,
    )
    assert record["captureData"]["endpointOutput"]["encoding"] == "BASE64"
    assert set(record["captureData"]) == {"endpointOutput"}


def test_key_layout_is_sagemakers() -> None:
    key = capture_key("ep", "AllTraffic", WHEN, unique="u")
    assert key == "ep/AllTraffic/2026/03/07/05/09-04-123-u.jsonl"


def test_sampling_percentage() -> None:
    half = CapturePolicy.from_request(
        {
            "DestinationS3Uri": "s3://b/p",
            "InitialSamplingPercentage": 50,
            "CaptureOptions": [{"CaptureMode": "Input"}],
        }
    )
    assert half.sampled(0.49) and not half.sampled(0.5)
    none = CapturePolicy.from_request(
        {
            "DestinationS3Uri": "s3://b/p",
            "InitialSamplingPercentage": 100,
            "CaptureOptions": [{"CaptureMode": "Input"}],
            "EnableCapture": False,
        }
    )
    assert not none.sampled(0.0)
    assert none.describe()["CaptureStatus"] == "Stopped"


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        (
            {
                "InitialSamplingPercentage": 101,
                "DestinationS3Uri": "s3://b",
                "CaptureOptions": [{"CaptureMode": "Input"}],
            },
            "initialSamplingPercentage",
        ),
        (
            {
                "InitialSamplingPercentage": 5,
                "DestinationS3Uri": "ftp://b",
                "CaptureOptions": [{"CaptureMode": "Input"}],
            },
            "destinationS3Uri",
        ),
        (
            {
                "InitialSamplingPercentage": 5,
                "DestinationS3Uri": "s3://b",
                "CaptureOptions": [{"CaptureMode": "Both"}],
            },
            "captureMode",
        ),
        (
            {"InitialSamplingPercentage": 5, "DestinationS3Uri": "s3://b", "CaptureOptions": []},
            "CaptureOptions",
        ),
        (
            {
                "InitialSamplingPercentage": 5,
                "DestinationS3Uri": "s3://b",
                "CaptureOptions": [{"CaptureMode": "Input"}],
                "CaptureContentTypeHeader": {"CsvContentTypes": []},
            },
            "CsvContentTypes",
        ),
    ],
)
def test_validation_names_the_member(config: dict[str, object], needle: str) -> None:
    problems = validate_data_capture_config(config)
    assert len(problems) == 1 and needle in problems[0]


def test_writer_batches_records_into_files(tmp_path: Path) -> None:
    p = policy(tmp_path.as_uri())
    writer = CaptureWriter(flush_interval=0.05)
    try:
        for i in range(25):
            assert writer.submit(p, "ep", "v1" if i % 2 else "v2", lambda i=i: {"n": i}, when=WHEN)
        assert writer.flush(10)
    finally:
        writer.close()
    files = sorted(tmp_path.rglob("*.jsonl"))
    assert files and all(
        f.relative_to(tmp_path).parts[:6]
        == ("ep", f.relative_to(tmp_path).parts[1], "2026", "03", "07", "05")
        for f in files
    )
    numbers = sorted(json.loads(line)["n"] for f in files for line in f.read_text().splitlines())
    assert numbers == list(range(25))
    assert writer.stats.written == 25 and writer.stats.dropped == 0 and writer.stats.failed == 0
    assert not list(tmp_path.rglob(".*.tmp"))


def test_writer_never_blocks_and_counts_drops(tmp_path: Path) -> None:
    p = policy(tmp_path.as_uri())
    gate = threading.Event()

    def slow() -> dict[str, int]:
        gate.wait(10)
        return {"slow": 1}

    writer = CaptureWriter(flush_interval=0.01, max_queue=2, max_batch=1)
    try:
        results = [writer.submit(p, "ep", "v", slow) for _ in range(10)]
        gate.set()
        assert writer.flush(10)
    finally:
        writer.close()
    assert results.count(False) == writer.stats.dropped > 0
    assert writer.stats.written == results.count(True)


def test_writer_puts_objects_to_s3(moto_server: str) -> None:
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    s3.create_bucket(Bucket="capture-unit")
    p = policy("s3://capture-unit/prefix/data")
    writer = CaptureWriter(flush_interval=0.05, s3_client_factory=lambda: s3)
    try:
        for i in range(3):
            writer.submit(p, "ep", "AllTraffic", {"i": i}, when=WHEN)
        assert writer.flush(10)
    finally:
        writer.close()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="capture-unit")["Contents"]]
    assert len(keys) == 1 and keys[0].startswith("prefix/data/ep/AllTraffic/2026/03/07/05/09-04-123-")
    body = s3.get_object(Bucket="capture-unit", Key=keys[0])["Body"].read().decode()
    assert [json.loads(line)["i"] for line in body.splitlines()] == [0, 1, 2]


def test_writer_survives_a_failing_destination(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    writer = CaptureWriter(flush_interval=0.01)
    try:
        writer.submit(policy(blocker.as_uri()), "ep", "v", {"x": 1})
        writer.submit(policy(tmp_path.as_uri()), "ep", "v", {"x": 2})
        assert writer.flush(10)
    finally:
        writer.close()
    assert writer.stats.failed == 1 and writer.stats.written == 1
