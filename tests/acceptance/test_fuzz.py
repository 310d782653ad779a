"""Fuzz (issue #26, "Robustness, measured" 2): malformed, oversized, mistyped and mis-encoded requests to the
control plane and the runtime of a running `selfmaker up`, and random bodies and content types to a
standalone model server (``python -m serving``), with strategies built from botocore's service models
(tests/fuzzkit.py).

Every answer: no 5xx (a ModelError, 424, is the model's answer and allowed), no traceback in the body.
Afterwards the warm endpoint still answers, and no file appeared outside ``--home``.

Requests: SELFMAKER_FUZZ_REQUESTS (default 2,400: about 90 s on a shared 2-core machine, most of it
hypothesis drawing; the issue's full run is SELFMAKER_FUZZ_REQUESTS=10500) split in three: control plane,
runtime, model server.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import botocore.session
import platform_helpers as helpers  # on sys.path via conftest.py
import pytest
from fuzzkit import FUZZ_REQUESTS, bad_answer, header_bytes, raw_body, value_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from testkit import find_free_port, wait_http

from selfmaker.api.registry import discover

ROOT = Path(__file__).resolve().parents[2]
PER_TARGET = max(1, FUZZ_REQUESTS // 3)
FUZZ = settings(
    max_examples=PER_TARGET,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
CONTENT_TYPES = [
    "text/csv",
    "application/json",
    "application/jsonlines",
    "application/x-npy",
    "application/x-recordio-protobuf",
    "text/libsvm",
    "application/octet-stream",
    "image/png",
    "text/csv; charset=utf-8",
    "application/json; charset=latin-1",
    "",
    "*/*",
    "multipart/form-data; boundary=x",
]


class RawClient:
    """One keep-alive connection to ``url`` that sends any bytes as header values and counts requests."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.conn: http.client.HTTPConnection | None = None
        self.sent = 0
        self.lock = threading.Lock()

    def send(
        self, method: str, path: str, headers: list[tuple[str, bytes]], body: bytes
    ) -> tuple[int, bytes]:
        with self.lock:
            self.sent += 1
            for attempt in (1, 2):  # a connection the server closed after its previous answer: once more
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
                try:
                    self.conn.putrequest(method, path, skip_accept_encoding=True)
                    for name, value in headers:
                        self.conn.putheader(name, value)
                    self.conn.putheader("Content-Length", str(len(body)).encode())
                    self.conn.endheaders(body)
                    resp = self.conn.getresponse()
                    data = resp.read()
                    if resp.getheader("Connection", "").lower() == "close":
                        self.close()
                    return resp.status, data
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                    self.close()
                    if attempt == 2:
                        raise
                except BaseException:
                    self.close()  # a half-sent request leaves the connection unusable
                    raise
            raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _tree(root: Path, skip: Path) -> set[Path]:
    return {p for p in root.rglob("*") if skip not in p.parents and p != skip}


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def platform(fuzz_root: Path) -> Iterator[Any]:
    """`selfmaker up` whose home is the only thing in its parent directory (checked at the end)."""
    with helpers.running(fuzz_root / "home") as server:
        yield server


@pytest.fixture(scope="module")
def warm(platform: Any, fuzz_root: Path) -> str:
    """A warm endpoint of the tiny classifier; returns its name."""
    sm = platform.sagemaker()
    model_uri = helpers.build_classifier_tar(fuzz_root / "model").as_uri()
    helpers.make_model(sm, "fuzz-model", model_uri)
    helpers.deploy(sm, "fuzz-warm", [helpers.variant("AllTraffic", "fuzz-model")])
    return "fuzz-warm"


@pytest.fixture(scope="module")
def outside_before(platform: Any, warm: str, fuzz_root: Path) -> set[Path]:
    return _tree(fuzz_root, fuzz_root / "home")


@pytest.fixture(scope="module")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A standalone model server of the same classifier (one worker)."""
    from common.archives import safe_extract  # the test process's own copy, only for this fixture

    work = tmp_path_factory.mktemp("fuzz-standalone")
    model_dir = work / "model"
    safe_extract(helpers.build_classifier_tar(work), model_dir)
    port = find_free_port()
    env = {**os.environ, "SAGEMAKER_MODEL_SERVER_WORKERS": "1", "PYTHONPATH": str(ROOT)}
    with open(work / "server.log", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving", "--model-dir", str(model_dir), "--host", "127.0.0.1"]
            + ["--port", str(port)],
            cwd=str(ROOT),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", timeout=60, alive=lambda: proc.poll() is None)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


SAGEMAKER = botocore.session.get_session().get_service_model("sagemaker")
RUNTIME = botocore.session.get_session().get_service_model("sagemaker-runtime")
#: the control-plane operations selfmaker implements (and botocore models)
OPERATIONS = sorted(set(discover().operations) & set(SAGEMAKER.operation_names))


@st.composite
def control_requests(draw: st.DrawFn) -> tuple[list[tuple[str, bytes]], bytes, str]:
    op = draw(st.sampled_from(OPERATIONS))
    body = draw(raw_body(value_for(SAGEMAKER.operation_model(op).input_shape)))
    target = draw(
        st.one_of(
            st.just(f"SageMaker.{op}".encode()),
            st.just(f"SageMaker.{op}".encode()),
            st.just(f"SageMaker.{op}".encode()),
            header_bytes(),
        )
    )
    content_type = draw(st.sampled_from([b"application/x-amz-json-1.1", b"application/json", b"text/plain"]))
    extra = draw(st.lists(st.tuples(st.sampled_from(["X-Amz-Date", "X-Fuzz"]), header_bytes()), max_size=2))
    return [("X-Amz-Target", target), ("Content-Type", content_type), *extra], body, op


def test_control_plane_fuzz(platform: Any, warm: str, outside_before: set[Path]) -> None:
    client = RawClient(platform.url)
    failures: list[str] = []

    # each drawn document goes to its operation and to the next one in OPERATIONS (a document of the wrong
    # shape altogether): drawing costs more than sending here
    @settings(FUZZ, max_examples=max(1, PER_TARGET // 2))
    @given(control_requests())
    def one(request: tuple[list[tuple[str, bytes]], bytes, str]) -> None:
        headers, body, op = request
        other = OPERATIONS[(OPERATIONS.index(op) + 1) % len(OPERATIONS)]
        for name, sent in (
            (op, headers),
            (other, [("X-Amz-Target", f"SageMaker.{other}".encode()), *headers[1:]]),
        ):
            status, answer = client.send("POST", "/", sent, body)
            problem = bad_answer(status, answer)
            if problem:
                failures.append(f"{name}: {problem}")
            assert problem is None, f"{name} {sent} {body[:200]!r}: {problem}"
            if status >= 400:  # the API's error shape
                assert set(json.loads(answer)) == {"__type", "message"}, answer[:300]

    try:
        one()
    finally:
        client.close()
    assert client.sent >= PER_TARGET
    assert failures == []


@st.composite
def runtime_requests(draw: st.DrawFn, endpoint: str) -> tuple[str, list[tuple[str, bytes]], bytes]:
    members = RUNTIME.operation_model("InvokeEndpoint").input_shape.members  # type: ignore[attr-defined]
    name = draw(st.one_of(st.just(endpoint), st.just(endpoint), st.just(endpoint), st.text(max_size=70)))
    route = draw(
        st.sampled_from(["invocations", "invocations", "invocations-response-stream", "async-invocations"])
    )
    path = f"/endpoints/{quote(name, safe='')}/{route}"
    headers: list[tuple[str, bytes]] = []
    content_type = draw(st.one_of(st.sampled_from(CONTENT_TYPES).map(str.encode), header_bytes()))
    headers.append(("Content-Type", content_type))
    for header, member in (
        ("Accept", "Accept"),
        ("X-Amzn-SageMaker-Custom-Attributes", "CustomAttributes"),
        ("X-Amzn-SageMaker-Target-Variant", "TargetVariant"),
        ("X-Amzn-SageMaker-Inference-Id", "InferenceId"),
        ("X-Amzn-SageMaker-Session-Id", "SessionId"),
    ):
        if draw(st.booleans()):
            value = draw(
                st.one_of(
                    value_for(members[member]).map(
                        lambda v: str(v).encode("utf-8", "surrogatepass").translate(None, b"\r\n\x00")
                    ),
                    header_bytes(),
                )
            )
            headers.append((header, value))
    body = draw(model_bodies())
    return path, headers, body


def model_bodies() -> st.SearchStrategy[bytes]:
    """Bodies a model might get: CSV rows of any width, JSON of any shape, .npy headers, random bytes."""
    number = st.floats(allow_nan=True, allow_infinity=True, width=32).map(repr)
    csv = st.lists(st.lists(number | st.text(max_size=4), min_size=0, max_size=8), max_size=4).map(
        lambda rows: "\n".join(",".join(r) for r in rows).encode("utf-8", "surrogatepass")
    )
    jsons = st.recursive(
        st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=12,
    ).map(lambda d: json.dumps(d).encode())
    npy = st.tuples(st.sampled_from(["<f4", "<f8", "|O", "<i8", "x"]), st.text(max_size=20)).map(
        lambda t: (
            b"\x93NUMPY\x01\x00"
            + (
                f"{{'descr': '{t[0]}', 'fortran_order': False, 'shape': ({t[1]}), }}".encode().ljust(118)
                + b"\n"
            )
        )
    )
    return st.one_of(csv, csv, jsons, npy, st.binary(max_size=512))


def test_runtime_fuzz(platform: Any, warm: str, outside_before: set[Path]) -> None:
    client = RawClient(platform.url)
    failures: list[str] = []

    # each drawn request goes to its route and to InvokeEndpointWithResponseStream's (or back): drawing
    # costs more than sending here
    @settings(FUZZ, max_examples=max(1, PER_TARGET // 2))
    @given(runtime_requests(warm))
    def one(request: tuple[str, list[tuple[str, bytes]], bytes]) -> None:
        path, headers, body = request
        other = (
            path.replace("/invocations-response-stream", "/invocations")
            if path.endswith("-response-stream")
            else path.replace("/invocations", "/invocations-response-stream").replace("/async-", "/")
        )
        for target in (path, other):
            status, answer = client.send("POST", target, headers, body)
            problem = bad_answer(status, answer)
            if problem:
                failures.append(problem)
            assert problem is None, f"{target} {headers} {body[:200]!r}: {problem}"

    try:
        one()
    finally:
        client.close()
    assert client.sent >= PER_TARGET
    assert failures == []


@st.composite
def model_server_requests(draw: st.DrawFn) -> tuple[str, str, list[tuple[str, bytes]], bytes]:
    method, path = draw(
        st.sampled_from(
            [("POST", "/invocations")] * 6
            + [("GET", "/ping"), ("GET", "/invocations"), ("POST", "/ping"), ("PUT", "/invocations")]
            + [("GET", "/metrics"), ("POST", "/execution-parameters"), ("GET", "/%ff"), ("POST", "/x" * 300)]
        )
    )
    headers = [
        ("Content-Type", draw(st.one_of(st.sampled_from(CONTENT_TYPES).map(str.encode), header_bytes())))
    ]
    if draw(st.booleans()):
        headers.append(
            ("Accept", draw(st.one_of(st.sampled_from(CONTENT_TYPES).map(str.encode), header_bytes())))
        )
    if draw(st.booleans()):
        headers.append(("X-Amzn-SageMaker-Custom-Attributes", draw(header_bytes())))
    return method, path, headers, draw(model_bodies())


def test_model_server_fuzz(model_server: str) -> None:
    client = RawClient(model_server)
    failures: list[str] = []

    # each drawn request is sent as drawn and once more as the other of CSV and JSON (drawing costs more
    # than sending here)
    @settings(FUZZ, max_examples=max(1, PER_TARGET // 2))
    @given(model_server_requests())
    def one(request: tuple[str, str, list[tuple[str, bytes]], bytes]) -> None:
        method, path, headers, body = request
        swapped = b"application/json" if headers[0][1] == b"text/csv" else b"text/csv"
        for sent in (headers, [("Content-Type", swapped), *headers[1:]]):
            status, answer = client.send(method, path, sent, body)
            problem = bad_answer(status, answer)
            if problem:
                failures.append(problem)
            assert problem is None, f"{method} {path} {sent} {body[:200]!r}: {problem}"

    try:
        one()
    finally:
        client.close()
    assert client.sent >= PER_TARGET
    assert failures == []
    pinger = RawClient(model_server)
    try:
        assert pinger.send("GET", "/ping", [], b"")[0] == 200
    finally:
        pinger.close()


def test_after_the_fuzz_the_warm_endpoint_answers_and_nothing_was_written_outside_home(
    platform: Any, warm: str, fuzz_root: Path, outside_before: set[Path]
) -> None:
    runtime = platform.runtime()
    assert helpers.invoke_variant(runtime, warm) == "AllTraffic"
    assert _tree(fuzz_root, fuzz_root / "home") - outside_before == set()
    assert "Traceback" not in platform.log()  # client errors are logged as one line
