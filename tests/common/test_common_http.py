"""common.http's thread clients against a real HTTP/1.1 server on 127.0.0.1: SyncPool (keep-alive, stale
connections, errors) and DeadlineConnection (streamed bodies, the deadline).

(:class:`common.http.UpstreamPool` has its own tests in tests/selfmaker/test_platform_upstream.py.)
"""

from __future__ import annotations

import http.client
import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from common.http import DeadlineConnection, SyncPool, invocation_headers
from common.proc import free_port


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    #: one entry per accepted connection
    connections: list[tuple[str, int]] = []

    def setup(self) -> None:
        super().setup()
        type(self).connections.append(self.client_address)

    #: set by a test to let a "/hang" request finish
    release = threading.Event()

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/hang":
            # then answer: a client that waited past its deadline would get this 200
            type(self).release.wait(60)  # bounded; set in the fixture's teardown
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        close = self.path.endswith("/close")
        payload = self.path.encode() + b" " + body
        self.send_response(200 if b"fail" not in body else 503)
        self.send_header("Content-Length", str(len(payload)))
        if close:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)
        if close:
            self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    _Handler.connections = []
    _Handler.release = threading.Event()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        _Handler.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def test_requests_reuse_one_connection_and_keep_the_base_path(server: ThreadingHTTPServer) -> None:
    pool = SyncPool.for_url(f"http://127.0.0.1:{server.server_address[1]}/base/", timeout=10)
    try:
        answers = [
            pool.request("POST", "/invocations", f"{i}".encode(), {"Content-Type": "text/csv"})
            for i in range(20)
        ]
        assert answers == [(200, f"/base/invocations {i}".encode()) for i in range(20)]
        assert pool.request("POST", "/x", b"fail") == (503, b"/base/x fail")
    finally:
        pool.close()
    assert len(_Handler.connections) == 1


def test_a_connection_the_server_closes_is_not_reused(server: ThreadingHTTPServer) -> None:
    pool = SyncPool("127.0.0.1", server.server_address[1], timeout=10)
    try:
        for i in range(3):
            assert pool.request("POST", "/close", b"%d" % i) == (200, b"/close %d" % i)
    finally:
        pool.close()
    assert len(_Handler.connections) == 3


class _IdleTimeoutHandler(_Handler):
    """Closes a kept-alive connection after 0.2 s without a request (a server's keep-alive timeout)."""

    timeout = 0.2
    closed = threading.Event()

    def finish(self) -> None:
        super().finish()
        type(self).closed.set()


def test_an_idle_connection_dropped_by_the_server_is_replaced_once(server: ThreadingHTTPServer) -> None:
    server.RequestHandlerClass = _IdleTimeoutHandler
    pool = SyncPool("127.0.0.1", server.server_address[1], timeout=10)
    try:
        assert pool.request("POST", "/a", b"1") == (200, b"/a 1")
        assert _IdleTimeoutHandler.closed.wait(30), "the server never closed the idle connection"
        assert pool.request("POST", "/a", b"2") == (200, b"/a 2")
    finally:
        pool.close()
    assert len(_Handler.connections) == 2


def test_nothing_listening_is_an_os_error() -> None:
    pool = SyncPool("127.0.0.1", free_port(), timeout=5)
    try:
        with pytest.raises(OSError):
            pool.request("GET", "/ping")
    finally:
        pool.close()
    assert issubclass(http.client.RemoteDisconnected, OSError)


def test_a_deadline_connection_streams_a_file_like_body(server: ThreadingHTTPServer) -> None:
    conn = DeadlineConnection("127.0.0.1", server.server_address[1], connect_timeout=5, deadline=30)
    try:
        conn.connect()
        payload = b"x" * (3 << 20)
        conn.request("POST", "/big", body=io.BytesIO(payload), headers={"Content-Length": str(len(payload))})
        response = conn.getresponse()
        assert response.status == 200 and response.read() == b"/big " + payload
        assert not conn.timed_out
    finally:
        conn.finish()


def test_a_deadline_connection_gives_up_at_its_deadline(server: ThreadingHTTPServer) -> None:
    conn = DeadlineConnection("127.0.0.1", server.server_address[1], connect_timeout=5, deadline=0.5)
    try:
        conn.connect()
        conn.request("POST", "/hang", body=b"", headers={"Content-Length": "0"})
        with pytest.raises((OSError, http.client.HTTPException)):
            conn.getresponse()  # blocks without a socket timeout: only the deadline can end it
        assert conn.timed_out
    finally:
        conn.finish()


def test_a_deadline_connection_that_cannot_connect_is_an_os_error() -> None:
    conn = DeadlineConnection("127.0.0.1", free_port(), connect_timeout=5, deadline=30)
    try:
        with pytest.raises(OSError):
            conn.connect()
        assert not conn.timed_out
    finally:
        conn.finish()


def test_invocation_headers_are_the_contract_s_without_cr_lf() -> None:
    assert invocation_headers(None) == {"Content-Type": "application/octet-stream"}
    assert invocation_headers(
        "text/csv", "application/json", custom_attributes="a=1\r\nX-Evil: 1", inference_id="id-1"
    ) == {
        "Content-Type": "text/csv",
        "Accept": "application/json",
        "X-Amzn-SageMaker-Custom-Attributes": "a=1X-Evil: 1",
        "X-Amzn-SageMaker-Inference-Id": "id-1",
    }
    assert invocation_headers("\r\n", "") == {"Content-Type": "application/octet-stream"}
