"""OneWriteResponse puts exactly the bytes gunicorn's own Response puts on the wire, in fewer sends."""

from __future__ import annotations

from typing import Any

import pytest
from gunicorn import util
from gunicorn.config import Config
from gunicorn.http import body, unreader, wsgi

from serving.http.response import MAX_JOINED_BODY, LengthBody, OneWriteResponse


class RecordingSocket:
    """The part of a socket gunicorn's writer uses; records every send."""

    def __init__(self) -> None:
        self.sends: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.sends.append(bytes(data))


class FakeRequest:
    def __init__(self, method: str = "POST", version: tuple[int, int] = (1, 1)) -> None:
        self.method = method
        self.version = version

    def should_close(self) -> bool:
        return False


def _write(
    cls: type[Any],
    method: str,
    status: str,
    headers: list[tuple[str, str]],
    chunks: list[bytes],
    version: tuple[int, int] = (1, 1),
) -> list[bytes]:
    sock = RecordingSocket()
    response = cls(FakeRequest(method, version), sock, Config())
    response.start_response(status, headers)
    for chunk in chunks:
        response.write(chunk)
    response.close()
    return sock.sends


CASES = {
    "small json answer": (
        "POST",
        "200 OK",
        [("Content-Type", "application/json"), ("Content-Length", "11")],
        [b'{"a": [1.5]}'[:11]],
    ),
    "empty body": ("GET", "200 OK", [("Content-Type", "application/json"), ("Content-Length", "0")], [b""]),
    "error body": (
        "POST",
        "415 Unsupported Media Type",
        [("Content-Type", "application/json"), ("Content-Length", "5")],
        [b"oops!"],
    ),
    "HEAD": ("HEAD", "200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")], [b"hello"]),
    "204": ("POST", "204 No Content", [], [b""]),
    "chunked (no length)": ("POST", "200 OK", [("Content-Type", "text/csv")], [b"1,2\n", b"3,4\n"]),
    "several chunks": ("POST", "200 OK", [("Content-Length", "8")], [b"1,2\n", b"3,4\n"]),
    "body longer than declared": ("POST", "200 OK", [("Content-Length", "3")], [b"123456"]),
    "large body": (
        "POST",
        "200 OK",
        [("Content-Length", str(MAX_JOINED_BODY + 1))],
        [b"x" * (MAX_JOINED_BODY + 1)],
    ),
    "HTTP/1.0": ("POST", "200 OK", [("Content-Length", "2")], [b"ok"]),
}


@pytest.fixture(autouse=True)
def fixed_date(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(util, "http_date", lambda *args: "Mon, 23 Nov 2026 00:00:00 GMT")


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_bytes_as_gunicorn(case: str) -> None:
    method, status, headers, chunks = CASES[case]
    version = (1, 0) if case == "HTTP/1.0" else (1, 1)
    ours = _write(OneWriteResponse, method, status, headers, chunks, version)
    theirs = _write(wsgi.Response, method, status, headers, chunks, version)
    assert b"".join(ours) == b"".join(theirs)


HEADER_SETS = [
    [("Content-Type", "text/csv"), ("Content-Length", "19")],
    [
        ("Content-Type", "text/csv"),
        ("Content-Length", "7"),
        ("x-Amzn-Invoked-Production-Variant", "AllTraffic"),
    ],
    [("Connection", "close"), ("Content-Length", "3"), ("Keep-Alive", "timeout=5"), ("X-A", " padded \t")],
    [
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "websocket"),
        ("X-Amzn-SageMaker-Custom-Attributes", "k=v"),
    ],
]


@pytest.mark.parametrize("headers", HEADER_SETS)
def test_checked_headers_end_as_gunicorns_do(headers: list[tuple[str, str]]) -> None:
    """The header check runs once per distinct header; cold or remembered, the response's headers,
    length and upgrade flag are gunicorn's."""
    for _ in range(3):  # the first pass checks and remembers, the next ones use what was remembered
        ours = OneWriteResponse(FakeRequest(), RecordingSocket(), Config())
        theirs = wsgi.Response(FakeRequest(), RecordingSocket(), Config())
        ours.process_headers(headers)
        theirs.process_headers(headers)
        assert ours.headers == theirs.headers
        assert ours.response_length == theirs.response_length
        assert ours.upgrade == theirs.upgrade


@pytest.mark.parametrize(
    "header",
    [("Bad Name", "x"), ("X-Ok", "line\r\nbreak"), ("X-Ok", 5), (b"X-Bytes", "x")],
)
def test_bad_headers_are_refused_every_time(header: tuple[Any, Any]) -> None:
    for _ in range(2):  # never remembered as checked
        for cls in (OneWriteResponse, wsgi.Response):
            with pytest.raises(Exception):  # noqa: B017 (gunicorn raises TypeError or its own ParseExceptions)
                cls(FakeRequest(), RecordingSocket(), Config()).process_headers([header])


def test_small_complete_body_is_one_send() -> None:
    body = b'{"predictions": [0.25]}'
    sends = _write(OneWriteResponse, "POST", "200 OK", [("Content-Length", str(len(body)))], [body])
    assert len(sends) == 1 and sends[0].endswith(b"\r\n\r\n" + body)
    assert len(_write(wsgi.Response, "POST", "200 OK", [("Content-Length", str(len(body)))], [body])) == 2


def test_large_body_is_not_copied() -> None:
    body = b"x" * (MAX_JOINED_BODY + 1)
    sends = _write(OneWriteResponse, "POST", "200 OK", [("Content-Length", str(len(body)))], [body])
    assert len(sends) == 2 and sends[1] == body


def test_date_header_is_formatted_once_per_second(monkeypatch: pytest.MonkeyPatch) -> None:
    import email.utils

    from serving.http import response as response_module

    clock = [1_795_000_000.25]  # Wed, 18 Nov 2026 11:06:40 GMT
    monkeypatch.setattr(response_module.time, "time", lambda: clock[0])
    calls: list[float] = []

    def counting_formatdate(timestamp: float, localtime: bool = False, usegmt: bool = False) -> str:
        calls.append(timestamp)
        return email.utils.formatdate(timestamp, localtime=localtime, usegmt=usegmt)

    monkeypatch.setattr(response_module, "formatdate", counting_formatdate)
    date = response_module.SecondDate()
    first = date()
    clock[0] += 0.5  # same second: the cached text
    assert date() == first == "Wed, 18 Nov 2026 11:06:40 GMT"
    clock[0] += 0.5  # the next second: formatted anew
    assert date() == "Wed, 18 Nov 2026 11:06:41 GMT"
    assert len(calls) == 2
    assert date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"  # an explicit timestamp is formatted as asked


@pytest.mark.parametrize("arrival", ["streamed", "buffered with the headers", "partly buffered"])
@pytest.mark.parametrize(
    "reads",
    [
        [11],  # the whole body at once: straight from the reader
        [100, 5],  # more than is left, then nothing
        [3, 100],  # a partial read, then the rest (gunicorn's own path)
        [None],
        [-1, 4],
        [0, 11, 1],
        [4, 4, 4, 4],
    ],
)
def test_length_body_reads_what_gunicorns_body_reads(reads: list[int | None], arrival: str) -> None:
    """``LengthBody`` hands over a Content-Length body with one copy; every sequence of reads gives
    the bytes gunicorn's ``Body`` gives, and the bytes after the body stay for the next request."""

    def run(cls: type[body.Body]) -> tuple[list[bytes], bytes]:
        if arrival == "streamed":
            source = unreader.IterUnreader([b"hel", b"lo wo", b"rldNEXT REQUEST"])
        elif arrival == "buffered with the headers":  # what the parser left after the header block
            source = unreader.IterUnreader([b"REQUEST"])
            source.unread(b"hello worldNEXT ")
        else:
            source = unreader.IterUnreader([b" wo", b"rldNEXT REQUEST"])
            source.unread(b"hello")
        reader = cls(body.LengthReader(source, 11))
        got = [reader.read(size) for size in reads]
        rest = b""
        while chunk := source.read():
            rest += chunk
        return got, rest

    assert run(LengthBody) == run(body.Body)
    got, rest = run(LengthBody)
    assert b"".join(got) == b"hello world" and rest == b"NEXT REQUEST"
