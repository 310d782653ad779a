"""The ``inline`` gunicorn worker: gthread's keep-alive event loop, each request run on the loop thread.

gunicorn's ``gthread`` worker hands every request from its event loop to a thread pool and the
finished connection back to the loop through a pipe: per request a pool hand-off, a pipe write and
read, a future and its callback, and thread wake-ups (futex calls). For a CPU-bound model that runs
as one process per core those threads buy nothing — the GIL lets one of them run at a time — and on
a 2-core machine they cost about a quarter of the server's CPU time per small request (see
docs/serving.md). This worker keeps everything else of gthread (keep-alive connections parked in the
poller, their timeouts, graceful shutdown, the worker heartbeat) and runs ``handle()`` inline when a
connection is readable.

The trade-offs are those of gunicorn's ``sync`` worker, which SageMaker's own model servers share
(each of their workers answers one request at a time): one slow request holds up the other
connections of its worker, and a request that runs longer than ``SAGEMAKER_MODEL_SERVER_TIMEOUT`` gets
the worker restarted; for hooks that wait on I/O, ``gthread`` is the better choice. Slow clients are
not among them: the worker is its own buffering front. A connection's bytes are read without blocking
as they arrive, and its request runs only once it is whole (``request_complete``), so idle connections
and clients that drip their headers or body (slowloris) hold a socket, not the worker, until
``SELFMAKER_SERVE_READ_TIMEOUT`` drops them; a socket read or write of a request already running waits at
most ``STALL_TIMEOUT`` seconds.
"""

from __future__ import annotations

import errno
import logging
import re
import selectors
import socket
import struct
import time
from collections.abc import Generator
from concurrent import futures
from datetime import datetime
from functools import partial
from typing import Any

from gunicorn import http, util
from gunicorn.http import wsgi
from gunicorn.http2 import negotiation
from gunicorn.workers import gthread
from gunicorn.workers.gthread import TConn, ThreadWorker

from serving.http.fastpath import DEFER_KEY, PendingInvocation

#: Seconds a socket read or write of a started request may wait for the client before the
#: connection is dropped (gthread waits as long for a new connection's first bytes).
STALL_TIMEOUT = 5.0

#: Requests answered back to back for one connection whose client pipelines them, before the
#: other connections get their turn.
PIPELINE_BURST = 16

#: Bytes read from a socket at a time while a request is buffered.
READ_CHUNK = 256 * 1024

#: Header block larger than this is handed to gunicorn's parser as it is (which answers 400 for
#: its line and field limits) instead of being buffered further.
MAX_HEAD_BYTES = 128 * 1024

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*(\d{1,12})[ \t]*\r\n", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding[ \t]*:[^\r\n]*chunked", re.IGNORECASE)


def request_complete(data: bytes | bytearray, body_limit: int) -> bool:
    """Whether ``data`` holds one whole HTTP/1.x request (its head and its body), or enough of a bad or
    oversized one for gunicorn's parser and the app to answer it (400, 413) without waiting for more.

    Bodies are framed by ``Content-Length`` or chunked encoding (complete at the ``0`` chunk and the
    blank line after it: a chunk extension or trailer fields delay nothing but the rare client that
    sends them slowly).
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return len(data) > MAX_HEAD_BYTES
    head = bytes(data[: end + 2])
    if _CHUNKED.search(head):
        return (
            data.endswith(b"\r\n0\r\n\r\n")
            or data.find(b"\r\n0\r\n\r\n", end) >= 0
            or (len(data) - end > body_limit)
        )
    found = _CONTENT_LENGTH.search(head)
    if found is None:
        return True
    length = int(found.group(1))
    return length > body_limit or len(data) - end - 4 >= length


class _Outcome:
    """What gthread's ``finish_request`` reads of a finished ``handle()``: a ``Future`` without the
    lock and condition a real one allocates (≈ 9 µs per request on the development VM)."""

    __slots__ = ("value", "error")

    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value = value
        self.error = error

    def cancelled(self) -> bool:
        return False

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


class _StalledClientRecord(logging.Filter):
    """Turns gunicorn's "Socket error processing request." with a traceback, logged when the stall
    timeout drops a connection (the socket call fails with EAGAIN), into a one-line warning: a client
    that went silent is the client's problem, not an error of the server."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BlockingIOError) and record.msg == "Socket error processing request.":
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = (
                "dropped a connection whose client sent or read nothing for %.0f s in the middle of a request"
            )
            record.args = (STALL_TIMEOUT,)
            record.exc_info = record.exc_text = None
        return True


class InlineWorker(ThreadWorker):
    """A ``gthread`` worker without the pool: requests are handled on the event-loop thread.

    Connections that turn readable in the same poll are served together: each request is parsed
    and passed to the app; invocations the app can batch come back as
    :class:`~serving.http.fastpath.PendingInvocation` and are answered by one
    :meth:`~serving.http.fastpath.PendingInvocation.run_all` (one model run for all of them), then
    every response is written. Under concurrent load that shares the model's fixed cost per run
    between requests; a lone request is answered as before.
    """

    _collected: list[TConn] | None = None
    alive: bool  # gunicorn's attribute (untyped there)
    #: seconds a request may take to arrive whole, from its first byte (ModelServer sets it from
    #: SELFMAKER_SERVE_READ_TIMEOUT before the workers fork)
    read_timeout: float = 30.0
    #: largest body buffered before the app sees the request (ModelServer sets SAGEMAKER_MAX_PAYLOAD_IN_MB)
    body_limit: int = 6 * 1024 * 1024
    _buffering: dict[TConn, tuple[bytearray, float]]

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        """gthread's dispatch, with the requests of one poll collected and served together."""
        collected: list[TConn] = []
        self._collected = collected
        try:
            events = self.poller.select(timeout)
            for key, _ in events:
                key.data(key.fileobj)
        except OSError as exc:
            if exc.errno != errno.EINTR:
                raise
        finally:
            self._collected = None
        if collected:
            self._serve_together(collected)

    def _serve_together(self, conns: list[TConn]) -> None:
        parked: list[tuple[TConn, Generator[PendingInvocation, None, Any], PendingInvocation]] = []
        for conn in conns:
            steps = self._handle_steps(conn)
            try:
                pending = next(steps)
            except StopIteration as done:
                self.finish_request(conn, _Outcome(done.value))
                continue
            except BaseException as exc:
                self.finish_request(conn, _Outcome(error=exc))
                continue
            parked.append((conn, steps, pending))
        if not parked:
            return
        PendingInvocation.run_all([pending for _, _, pending in parked])
        for conn, steps, _ in parked:
            try:
                steps.send(None)
                outcome = _Outcome(error=RuntimeError("request handler did not finish"))
            except StopIteration as done:
                outcome = _Outcome(done.value)
            except BaseException as exc:
                outcome = _Outcome(error=exc)
            self.finish_request(conn, outcome)

    def _handle_steps(self, conn: TConn) -> Generator[PendingInvocation, None, Any]:
        """gthread's ``handle`` and ``handle_request`` (gunicorn 27) as one generator that yields
        the app's :class:`PendingInvocation`, when it returns one, until the batch has run.
        Returns what ``handle`` returns: keep-alive or not (or gthread's defer marker)."""
        req = None
        try:
            if (
                not conn.initialized
                and not conn.data_ready
                and not conn.wait_for_data(gthread.DEFAULT_WORKER_DATA_TIMEOUT)
            ):
                return gthread._DEFER
            conn.sock.setblocking(True)
            conn.init()
            if conn.is_http2:
                return self.handle_http2(conn)
            req = next(conn.parser)
            if not req:
                return False
            settings = None
            if negotiation.upgrade_allowed(self.cfg, conn.client):
                settings = negotiation.upgrade_settings(req)
            if settings is not None:
                return self.handle_h2c_upgrade(conn, req, settings)
            keepalive = yield from self._request_steps(req, conn)
            return self._keepalive_after(conn, keepalive)
        except http.errors.NoMoreData as exc:
            self.log.debug("Ignored premature client disconnection. %s", exc)
        except StopIteration as exc:
            self.log.debug("Closing connection. %s", exc)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.exception("Socket error processing request.")
            else:
                self.log.debug("Ignoring connection error %s", exc)
        except Exception as exc:
            self.handle_error(req, conn.sock, conn.client, exc)
        return False

    def _request_steps(self, req: Any, conn: TConn) -> Generator[PendingInvocation, None, bool]:
        """gthread's ``handle_request`` with the app's answer possibly deferred (see above)."""
        environ: dict[str, Any] = {}
        resp = None
        try:
            self.cfg.pre_request(self, req)
            request_start = datetime.now()
            resp, environ = wsgi.create(req, conn.sock, conn.client, conn.server, self.cfg)
            environ["wsgi.multithread"] = True
            environ[DEFER_KEY] = True
            self.nr += 1
            if self.nr >= self.max_requests:
                if self.alive:
                    self.log.info("Autorestarting worker after current request.")
                    self.alive = False
                resp.force_close()
            if not self.alive or not self.cfg.keepalive or len(self.keepalived_conns) >= self.max_keepalived:
                resp.force_close()
            respiter = self.wsgi(environ, resp.start_response)
            if type(respiter) is PendingInvocation:
                yield respiter
                respiter = respiter.finish()
            try:
                if isinstance(respiter, environ["wsgi.file_wrapper"]):
                    resp.write_file(respiter)
                else:
                    for item in respiter:
                        resp.write(item)
                resp.close()
            finally:
                self.log.access(resp, req, environ, datetime.now() - request_start)
                if hasattr(respiter, "close"):
                    respiter.close()
            if resp.should_close():
                self.log.debug("Closing connection.")
                return False
        except OSError:
            raise
        except (Exception, SystemExit):
            if resp and resp.headers_sent:
                self.log.exception("Error handling request")
                util.close_graceful(conn.sock)
                raise StopIteration() from None
            raise
        finally:
            try:
                self.cfg.post_request(self, req, environ, resp)
            except Exception:
                self.log.exception("Exception in post_request hook")
        return True

    def init_process(self) -> None:
        logging.getLogger("gunicorn.error").addFilter(_StalledClientRecord())
        self._buffering = {}
        super().init_process()

    # ---- the buffering front: a request reaches handle() only once it arrived whole ----------------
    #
    # handle() runs on the loop thread and reads the socket blocking; a client that drips its headers
    # or body (slowloris) would hold every other connection of the worker. So the poller's callbacks
    # read what a readable connection has, without blocking, and hand the connection to handle() only
    # when its request is complete; until then it waits in the poller, at most ``read_timeout`` seconds.

    def on_pending_socket_readable(self, conn: TConn, client: socket.socket) -> None:
        self._buffer_then_enqueue(conn, client, self.pending_conns)

    def on_client_socket_readable(self, conn: TConn, client: socket.socket) -> None:
        self._buffer_then_enqueue(conn, client, self.keepalived_conns)

    def _buffer_then_enqueue(self, conn: TConn, client: socket.socket, waiting: Any) -> None:
        entry = self._buffering.get(conn)
        if entry is None:
            entry = self._buffering[conn] = (bytearray(), time.monotonic() + self.read_timeout)
            waiting.remove(conn)  # from now on the request's deadline applies, not the idle timeout
        buffer = entry[0]
        while True:
            try:
                chunk = client.recv(READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                chunk = b""
            if not chunk:  # the client went away before its request was whole
                self._drop_buffering(conn)
                return
            buffer += chunk
            if len(chunk) < READ_CHUNK:
                break
        if not request_complete(buffer, self.body_limit):
            return
        del self._buffering[conn]
        self.poller.unregister(client)
        if conn.parser is None:
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
        conn.parser.unreader.unread(bytes(buffer))
        conn.data_ready = True
        self.enqueue_req(conn)

    def _drop_buffering(self, conn: TConn) -> None:
        self._buffering.pop(conn, None)
        try:
            self.poller.unregister(conn.sock)
        except (OSError, KeyError, ValueError):
            pass
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """gthread's clean-up of idle new connections, and of requests still incomplete after
        ``read_timeout`` seconds."""
        super().murder_pending()
        now = time.monotonic()
        late = [conn for conn, (_, deadline) in self._buffering.items() if deadline <= now]
        for conn in late:
            self.log.warning(
                "dropped a connection whose request was not complete %.0f s after its first byte",
                self.read_timeout,
            )
            self._drop_buffering(conn)

    def get_thread_pool(self) -> futures.ThreadPoolExecutor:
        # gthread shuts its pool down on exit; one that is never submitted to starts no thread
        return futures.ThreadPoolExecutor(max_workers=1)

    def accept(self, listener: socket.socket) -> None:
        """Park a new connection in the poller until its first request arrives.

        gthread instead lets a pool thread wait (up to 5 s) for the first bytes; here that wait would
        stall the whole loop.
        """
        try:
            client, address = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        # kernel-level timeouts (not Python's socket timeout, which polls before every call): a
        # client that stalls mid-request gets EAGAIN and its connection dropped instead of holding
        # the worker until gunicorn kills it
        stall = struct.pack("ll", int(STALL_TIMEOUT), int(STALL_TIMEOUT % 1 * 1e6))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, stall)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, stall)
        conn = TConn(self.cfg, client, address, listener.getsockname())
        conn.timeout = time.monotonic() + self.cfg.keepalive
        self.pending_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_pending_socket_readable, conn))

    def enqueue_req(self, conn: TConn) -> None:
        """Answer the connection's request now — or, while a poll's events are being dispatched,
        once they all are (see :meth:`wait_for_and_dispatch_events`); return the connection to the
        poller (or close it) after."""
        if self._collected is not None:
            self._collected.append(conn)
            return
        for _ in range(PIPELINE_BURST):
            try:
                outcome = _Outcome(self.handle(conn))
            except BaseException as exc:  # handle() maps its own errors; finish_request re-raises the rest
                outcome = _Outcome(error=exc)
            if outcome.error is not None or not outcome.value or not self._has_buffered_request(conn):
                self.finish_request(conn, outcome)
                return
            self.notify()  # a pipelining client: answer its next request without polling
        # fairness: the rest of this client's pipeline waits one turn of the loop
        self.method_queue.defer(self.enqueue_req, conn)

    @staticmethod
    def _has_buffered_request(conn: TConn) -> bool:
        parser = conn.parser
        return parser is not None and bool(parser.unreader.buf.getvalue())
