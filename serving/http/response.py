"""gunicorn's HTTP/1 response writer, sending a whole small response in one ``send`` (and its
request body reader, reading a ``Content-Length`` body with one copy).

gunicorn writes the status line and headers with one ``sendall`` and then each body chunk with
another. For a model server's typical answer (a few hundred bytes, ``Content-Length`` known, one
body chunk) that is two system calls and two TCP segments per request where one does; on loopback
the second costs about as much CPU as a small model's prediction. :class:`OneWriteResponse` joins
the header block and the first body chunk when the chunk is the entire body and small, and defers
to gunicorn in every other case (chunked, HEAD/204/304, partial or large bodies, headers already
sent); an app's ``Connection: close`` closes the connection (a 413 leaves its unread body behind).
:func:`install` makes gunicorn's ``wsgi.create`` build it and its parser :class:`LengthBody`,
and makes the errors gunicorn answers itself (a malformed request line or header, a bad chunk size,
...) JSON like every other error of the server (:func:`write_json_error`); call it in the worker
process.
"""

from __future__ import annotations

import io
import time
from email.utils import formatdate
from typing import Any

from gunicorn import util
from gunicorn.http import body, message, wsgi

from serving.errors import error_body

#: Larger bodies go out as gunicorn sends them (copying a big body to prepend headers costs more).
MAX_JOINED_BODY = 256 * 1024
#: How many distinct response headers :class:`OneWriteResponse` remembers as checked (then it checks
#: new ones every time, as gunicorn does).
MAX_CHECKED_HEADERS = 1024
#: Response headers gunicorn's checks passed unchanged: ``(name, value)`` → is it ``Content-Length``.
_CHECKED_HEADERS: dict[tuple[str, str], bool] = {}


class OneWriteResponse(wsgi.Response):
    """A ``gunicorn.http.wsgi.Response`` that sends headers + a complete small body together."""

    headers_sent: bool  # gunicorn's attribute (untyped there)
    headers: list[tuple[str, str]]
    response_length: int | None
    must_close: bool

    def process_headers(self, headers: Any) -> None:
        """gunicorn's header checks (token name, value bytes, hop-by-hop dropped, ``Content-Length``
        read), run once per distinct header: a model server answers with the same few headers every
        time (``Content-Type: text/csv``, ``x-Amzn-Invoked-Production-Variant: AllTraffic``, a handful
        of lengths), and the two regular expressions and the hop-by-hop test cost ≈ 1–2 µs a header.
        An app's ``Connection: close`` closes the connection after the answer (gunicorn drops hop-by-hop
        headers and would say keep-alive): a 413 leaves its unread body behind."""
        checked = _CHECKED_HEADERS
        out = self.headers
        for header in headers:
            is_length = checked.get(header) if type(header) is tuple else None
            if is_length is None:
                if header[0].lower() == "connection" and header[1].strip().lower() == "close":
                    self.must_close = True
                count = len(out)
                super().process_headers((header,))  # raises as gunicorn does on a bad header
                if len(out) == count + 1 and out[-1] == header and len(checked) < MAX_CHECKED_HEADERS:
                    checked[header] = header[0].lower() == "content-length"
                continue
            if is_length:
                self.response_length = int(header[1])
            out.append(header)

    def write(self, arg: Any) -> None:
        if (
            not self.headers_sent
            and type(arg) is bytes
            and not self.chunked
            and self.response_length == len(arg)
            and 0 < len(arg) <= MAX_JOINED_BODY
            and not getattr(self, "_omits_body", False)
            and self.req.method != "HEAD"
        ):
            tosend = self.default_headers()
            tosend.extend([f"{key}: {value}\r\n" for key, value in self.headers])
            head = ("".join(tosend) + "\r\n").encode("latin-1")
            util.write(self.sock, head + arg)
            self.headers_sent = True
            self.sent = len(arg)
            return
        super().write(arg)


class LengthBody(body.Body):
    """gunicorn's request ``Body``, handing over what is left of a ``Content-Length`` body in one
    piece when asked for all of it (what the model server does): straight from the parser's
    read-ahead buffer when it arrived with the headers (the usual small request), else from the
    reader. gunicorn's ``Body.read`` buffers every read again in a ``BytesIO`` of its own, copying a
    small body three more times (≈ 10 µs per request). Everything else (partial reads, chunked
    bodies, readline) is gunicorn's; the tests compare every read sequence with gunicorn's ``Body``."""

    def read(self, size: int | None = None) -> bytes:
        reader = self.reader
        if (
            type(reader) is body.LengthReader
            and type(size) is int
            and size >= reader.length
            and not self.buf.tell()
        ):
            length = reader.length
            if not length:
                return b""
            source = reader.unreader
            held = source.buf.getvalue()
            if len(held) < length:  # not all arrived with the headers: gunicorn reads the rest
                return self._read_reader(length)
            # what the unreader's read does for a request whose body is already buffered
            source.buf = io.BytesIO()
            source.buf.write(held[length:])
            reader.length = 0
            return held[:length]
        return super().read(size)


class SecondDate:
    """gunicorn's ``util.http_date``, formatting the ``Date`` header once per second instead of once
    per response (``email.utils.formatdate`` costs ≈ 15–20 µs of CPU per request on a small VM, as
    much as a small model's prediction); the header's resolution is one second anyway."""

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def __call__(self, timestamp: float | None = None) -> str:
        if timestamp is not None:
            return formatdate(timestamp, localtime=False, usegmt=True)
        second = int(time.time())
        if second != self.second:
            self.text = formatdate(second, localtime=False, usegmt=True)
            self.second = second
        return self.text


def write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """``gunicorn.util.write_error`` with the server's JSON error body instead of an HTML page."""
    body = error_body(status_int, mesg or reason)
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


def install() -> None:
    """Make gunicorn build :class:`OneWriteResponse` for HTTP/1 requests in this process, read their
    bodies with :class:`LengthBody`, date its responses with :class:`SecondDate`, and answer the
    errors it handles itself with :func:`write_json_error`."""
    wsgi.Response = OneWriteResponse
    message.Body = LengthBody
    util.write_error = write_json_error
    if not isinstance(util.http_date, SecondDate):
        util.http_date = SecondDate()
