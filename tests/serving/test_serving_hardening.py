"""Fuzz findings of issue #26, kept fixed on a real model server (``python -m serving`` on 127.0.0.1).

* an ``.npy`` header is checked against the bytes that follow it before anything is allocated;
* a 413 says ``Connection: close`` and closes (the unread body is never parsed as a request), on
  ``/invocations`` and on the runtime path;
* requests gunicorn cannot parse get a JSON 400 and one WARNING line in the log, no traceback.
"""

from __future__ import annotations

import io
import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import requests
from serving_helpers import Server, wait_for_log

ROW = b"2.0,1.0,0.0,0.0\n"


@pytest.fixture(scope="module")
def small(serve: Callable[..., Server], binary_model: Path) -> Server:
    """A server with a 1 MB payload limit, answering the runtime path of endpoint ``hard``."""
    return serve(
        "--model-dir",
        str(binary_model),
        env={"SAGEMAKER_MAX_PAYLOAD_IN_MB": "1", "SELFMAKER_ENDPOINT_NAME": "hard"},
    )


def exchange(server: Server, request: bytes, timeout: float = 10.0) -> tuple[bytes, bool]:
    """Send raw bytes on a new connection; (everything answered, True when the server closed it)."""
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        answer = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return answer, False
            except ConnectionResetError:
                return answer, True
            if not chunk:
                return answer, True
            answer += chunk


def npy_header(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    header = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


def test_npy_header_declaring_more_than_the_body_is_a_400(small: Server) -> None:
    huge = npy_header((1_000_000_000, 4)) + b"\0" * 16
    answer = requests.post(
        small.url + "/invocations", data=huge, headers={"Content-Type": "application/x-npy"}, timeout=10
    )
    assert answer.status_code == 400, answer.text
    assert "declares shape (1000000000, 4)" in answer.json()["error"]
    assert "only 16 bytes follow it" in answer.json()["error"]
    short = npy_header((3, 4)) + b"\0" * 47  # one byte short of 3 x 4 float32
    refused = requests.post(
        small.url + "/invocations", data=short, headers={"Content-Type": "application/x-npy"}, timeout=10
    )
    assert refused.status_code == 400 and "only 47 bytes follow it" in refused.json()["error"]
    buffer = io.BytesIO()
    np.save(buffer, np.asfortranarray(np.array([[2, 1, 0, 0], [0, 1, 2, 3]], dtype=np.float64)))
    fine = requests.post(
        small.url + "/invocations",
        data=buffer.getvalue(),
        headers={"Content-Type": "application/x-npy"},
        timeout=10,
    )
    assert fine.status_code == 200 and len(fine.json()["predictions"]) == 2
    assert small.alive()


@pytest.mark.parametrize("path", ["/invocations", "/endpoints/hard/invocations"])
def test_413_closes_the_connection(small: Server, path: str) -> None:
    declared = 2 * 1024 * 1024
    # a declared body over the limit, of which a part was sent: the server must not read the rest as a
    # new request on a kept-alive connection
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/csv\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode() + b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    answer, closed = exchange(small, request)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert closed, answer
    assert b"Connection: close" in head and b"keep-alive" not in head
    assert answer.count(b"HTTP/1.1 ") == 1  # the smuggled /ping was never answered
    assert b"exceeds the 1 MB limit" in body
    status = int(head.split(b" ", 2)[1])
    assert status == (413 if path == "/invocations" else 400)  # the runtime path answers SageMaker's 400
    # a request under the limit keeps its connection open
    ok, closed_ok = exchange(
        small,
        b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/csv\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(ROW), ROW),
        timeout=2.0,
    )
    assert ok.startswith(b"HTTP/1.1 200") and b"keep-alive" in ok and not closed_ok


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        # the whole chunked body arrives (the inline worker buffers a request until it is whole)
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n0\r\n\r\n",
        b"POST /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
)
def test_unparsable_requests_get_json_400_and_one_log_line(small: Server, request_bytes: bytes) -> None:
    answer, closed = exchange(small, request_bytes, timeout=30.0)  # a loaded machine answers slowly
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and closed
    assert b"Content-Type: application/json" in head
    assert b'"status":400' in body
    assert "Traceback" not in small.log()
    assert requests.get(small.url + "/ping", timeout=5).status_code == 200


def test_an_archive_above_the_unpacking_limit_fails_to_load(
    serve: Callable[..., Server], binary_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import tarfile

    archive = tmp_path_factory.mktemp("bomb") / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(binary_model / "model.onnx", arcname="model.onnx")
        data = io.BytesIO(b"\0" * 300_000)  # compresses to a few hundred bytes
        info = tarfile.TarInfo("padding.bin")
        info.size = len(data.getvalue())
        tar.addfile(info, data)
    server = serve(
        "--model-data", archive.as_uri(), env={"SELFMAKER_MAX_UNPACKED_BYTES": "200000"}, expect=503
    )
    wait_for_log(server, "model failed to load", timeout=60)  # /ping says "loading" until then
    ping = requests.get(server.url + "/ping", timeout=5)
    assert ping.status_code == 503
    error = ping.json()["error"]
    assert "model failed to load" in error and "more than the limit of 200000 bytes" in error, error
    assert "SELFMAKER_MAX_UNPACKED_BYTES" in error
