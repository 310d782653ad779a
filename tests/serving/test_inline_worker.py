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
from testkit import wait_until

from bench.slowclients import Attack, well_behaved_calls
from serving.http.worker import MAX_HEAD_BYTES, request_complete

ROWS = [f"{i * 0.1:.1f},1.0,-{i * 0.2:.1f},0.5\n".encode() for i in range(40)]


#: SELFMAKER_SERVE_READ_TIMEOUT of the module's server: how long an incomplete request may keep its socket
READ_TIMEOUT = 3


@pytest.fixture(scope="module")
def server(serve: Callable[..., Server], binary_model: Path) -> Server:
    """One worker, so every connection of a test lands on the same event loop."""
    return serve(
        "--model-dir", str(binary_model), workers=1, env={"SELFMAKER_SERVE_READ_TIMEOUT": str(READ_TIMEOUT)}
    )


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


def test_a_client_stalling_mid_request_holds_nothing_up_and_is_dropped_after_the_read_timeout(
    server: Server,
) -> None:
    """Headers and half a body, then silence: the worker goes on answering others at once (the request
    waits in the poller until whole), and the connection is closed after SELFMAKER_SERVE_READ_TIMEOUT
    (gunicorn's worker timeout, 60 s here, never comes into it) with a one-line warning."""
    with connect(server) as stalled:
        stalled.sendall(invocation(b"1.0,2.0")[:-3].replace(b"Content-Length: 7", b"Content-Length: 70"))
        answer = requests.post(
            server.url + "/invocations", data=ROWS[3], headers={"Content-Type": "text/csv"}, timeout=10
        )
        assert answer.status_code == 200
        stalled.setblocking(False)
        with pytest.raises(BlockingIOError):  # still open: the answer above did not wait for it to go
            stalled.recv(65536)
        stalled.settimeout(READ_TIMEOUT + 10)
        assert stalled.recv(65536) == b""  # dropped without an answer: nobody is left to read one
    log = wait_for_log(server, f"whose request was not complete {READ_TIMEOUT} s after its first byte")
    assert "WORKER TIMEOUT" not in log
    assert "Socket error processing request" not in log and "BlockingIOError" not in log  # no traceback


def test_idle_and_slowloris_clients_do_not_stop_a_well_behaved_one(server: Server) -> None:
    """500 idle connections and 50 clients dripping headers or bodies (the issue: 30 of them stopped the
    model server) while a client makes 200 calls on one connection: it gets every answer."""
    parts = urlsplit(server.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    with Attack(host, port, "/invocations", idle=500, slow=50, interval=0.5, max_seconds=120) as attack:
        result = well_behaved_calls(host, port, "/invocations", 200, timeout=20)
        # the attack goes on past the read timeout: its slow clients are dropped and reopened
        wait_until(lambda: attack.reopened > 0, timeout=READ_TIMEOUT * 10, what="slow clients dropped")
        again = well_behaved_calls(host, port, "/invocations", 50, timeout=20)
    assert result["ok"] == 200, result["statuses"][-5:]
    assert again["ok"] == 50, again["statuses"][-5:]
    assert attack.reopened > 0  # the slow clients were dropped after the read timeout (and came back)
    answer = requests.post(
        server.url + "/invocations", data=ROWS[4], headers={"Content-Type": "text/csv"}, timeout=10
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


@pytest.mark.parametrize(
    ("data", "complete"),
    [
        (b"GET /ping HTTP/1.1\r\nHost: x\r\n", False),
        (b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n", True),
        (b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\n1.0", False),
        (b"POST / HTTP/1.1\r\ncontent-length:4\r\n\r\n1.0,", True),
        (b"POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n", True),  # too large: the app says 413
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n1.0\r\n", False),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n1.0\r\n0\r\n\r\n", True),
        (b"X" * (MAX_HEAD_BYTES + 1), True),  # no end of head in sight: the parser answers 400
    ],
)
def test_request_complete_frames_heads_and_bodies(data: bytes, complete: bool) -> None:
    assert request_complete(data, 6 * 1024 * 1024) is complete
