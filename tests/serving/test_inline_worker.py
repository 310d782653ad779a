"""The default ``inline`` worker over raw sockets: keep-alive, pipelining, idle clients, and the other
worker classes still selectable."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from serving_helpers import Server, wait_for_log

ROWS = [f"{i * 0.1:.1f},1.0,-{i * 0.2:.1f},0.5\n".encode() for i in range(40)]


@pytest.fixture(scope="module")
def server(serve: Callable[..., Server], binary_model: Path) -> Server:
    """One worker, so every connection of a test lands on the same event loop."""
    return serve("--model-dir", str(binary_model), workers=1)


def connect(server: Server) -> socket.socket:
    parts = urlsplit(server.url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    return sock


def invocation(row: bytes, *extra: str) -> bytes:
    head = [
        "POST /invocations HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: text/csv",
        "Accept: text/csv",
        f"Content-Length: {len(row)}",
        *extra,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + row


PING = b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def read_responses(
    sock: socket.socket, count: int, deadline: float = 15.0
) -> list[tuple[int, dict[str, str], bytes]]:
    """``count`` HTTP/1.1 responses framed by Content-Length, in the order they arrived."""
    buffer = b""
    responses: list[tuple[int, dict[str, str], bytes]] = []
    stop = time.monotonic() + deadline
    while len(responses) < count:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            lines = buffer[:end].decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
            length = int(headers.get("content-length", "0"))
            if len(buffer) >= end + 4 + length:
                responses.append((int(lines[0].split()[1]), headers, buffer[end + 4 : end + 4 + length]))
                buffer = buffer[end + 4 + length :]
                continue
        assert time.monotonic() < stop, f"only {len(responses)} of {count} responses arrived"
        chunk = sock.recv(65536)
        if not chunk:
            break
        buffer += chunk
    assert len(responses) == count, f"connection closed after {len(responses)} of {count} responses"
    return responses


def expected_csv(server: Server, row: bytes) -> bytes:
    answer = requests.post(
        server.url + "/invocations",
        data=row,
        headers={"Content-Type": "text/csv", "Accept": "text/csv"},
        timeout=10,
    )
    assert answer.status_code == 200
    return answer.content


def test_keep_alive_connection_answers_request_after_request(server: Server) -> None:
    with connect(server) as sock:
        for row in ROWS[:5]:
            sock.sendall(invocation(row))
            [(status, headers, body)] = read_responses(sock, 1)
            assert status == 200 and headers["connection"] == "keep-alive"
            assert body == expected_csv(server, row)


def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    """More requests in one write than the worker answers in one turn (PIPELINE_BURST)."""
    wanted = [expected_csv(server, row) for row in ROWS]
    with connect(server) as sock:
        sock.sendall(b"".join(invocation(row) + PING for row in ROWS))
        responses = read_responses(sock, 2 * len(ROWS))
    for i, row_answer in enumerate(wanted):
        status, _, body = responses[2 * i]
        assert (status, body) == (200, row_answer)
        assert responses[2 * i + 1][0] == 200  # the ping after it


def test_idle_and_pipelining_clients_do_not_starve_others(server: Server) -> None:
    """An idle connection waits in the poller, and a long pipeline yields its turn."""
    with connect(server) as idle, connect(server) as greedy:
        greedy.sendall(b"".join(invocation(ROWS[0]) for _ in range(400)))
        assert requests.get(server.url + "/ping", timeout=5).status_code == 200
        assert len(read_responses(greedy, 400)) == 400
        idle.sendall(PING)
        assert read_responses(idle, 1)[0][0] == 200


def test_connection_close_is_honoured(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(invocation(ROWS[1], "Connection: close"))
        [(status, headers, _)] = read_responses(sock, 1)
        assert status == 200 and headers["connection"] == "close"
        assert sock.recv(1) == b""  # the server closed its end


def test_bad_request_on_a_kept_alive_connection_leaves_the_worker_serving(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(invocation(b"not,a,number,row\n"))
        [(status, _, body)] = read_responses(sock, 1)
        assert status == 400 and b"is not a number" in body
        sock.sendall(b"GARBAGE\r\n\r\n")  # gunicorn's own parser rejects it: the body is JSON too
        [(status, headers, body)] = read_responses(sock, 1)
        assert status == 400 and headers["content-type"] == "application/json"
        assert json.loads(body)["error"].startswith("Invalid Request Line")
    with connect(server) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
        [(status, headers, body)] = read_responses(sock, 1)
        assert status == 431 and json.loads(body)["status"] == 431
    assert requests.get(server.url + "/ping", timeout=5).status_code == 200


@pytest.mark.parametrize("worker_class", ["gthread", "sync"])
def test_other_worker_classes_stay_selectable(
    serve: Callable[..., Server], binary_model: Path, worker_class: str
) -> None:
    other = serve("--model-dir", str(binary_model), env={"SELFMAKER_SERVE_WORKER_CLASS": worker_class})
    answer = requests.post(
        other.url + "/invocations", data=ROWS[2], headers={"Content-Type": "text/csv"}, timeout=10
    )
    assert answer.status_code == 200 and "predictions" in answer.json()
    assert f"Using worker: {worker_class}" in other.log()


def test_a_client_stalling_mid_request_is_dropped_and_the_worker_serves_on(server: Server) -> None:
    """Headers and half a body, then silence: the connection is closed after the stall timeout
    (gunicorn's worker timeout, 60 s here, never comes into it) and the same worker answers others."""
    with connect(server) as stalled:
        stalled.sendall(invocation(b"1.0,2.0")[:-3].replace(b"Content-Length: 7", b"Content-Length: 70"))
        time.sleep(0.2)  # let the worker pick the request up and block on the rest of the body
        assert requests.get(server.url + "/ping", timeout=20).status_code == 200
        assert stalled.recv(65536) == b""  # dropped without an answer: nobody is left to read one
    log = wait_for_log(server, "dropped a connection whose client sent or read nothing for 5 s")
    assert "WORKER TIMEOUT" not in log
    assert (
        "Socket error processing request" not in log and "BlockingIOError" not in log
    )  # a warning, no traceback
    answer = requests.post(
        server.url + "/invocations", data=ROWS[3], headers={"Content-Type": "text/csv"}, timeout=10
    )
    assert answer.status_code == 200


def test_malformed_chunked_body_is_a_400(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nzz\r\n1.0\r\n0\r\n\r\n"
        )
        [(status, headers, body)] = read_responses(sock, 1)
    assert status == 400 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"].startswith("Invalid chunk size")
    assert headers["connection"] == "close"  # the stream is out of step: no next request on it
    assert requests.get(server.url + "/ping", timeout=5).status_code == 200
