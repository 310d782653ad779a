"""The ``inline`` gunicorn worker: gthread's keep-alive event loop, each request run on the loop thread.

gunicorn's ``gthread`` worker hands every request from its event loop to a thread pool and the
finished connection back to the loop through a pipe: per request a pool hand-off, a pipe write and
read, a future and its callback, and thread wake-ups (futex calls). For a CPU-bound model that runs
as one process per core those threads buy nothing — the GIL lets one of them run at a time — and on
a 2-core machine they cost about a quarter of the server's CPU time per small request (see docs/serving.md). This worker
keeps everything else of gthread (keep-alive connections parked in the poller, their timeouts,
graceful shutdown, the worker heartbeat) and runs ``handle()`` inline when a connection is readable.

The trade-offs are those of gunicorn's ``sync`` worker, which SageMaker's own model servers share
(each of their workers answers one request at a time): one slow request holds up the other
connections of its worker, a request that runs longer than ``SAGEMAKER_MODEL_SERVER_TIMEOUT`` gets
the worker restarted, and a client that stalls half-way through a request holds the worker for up
to ``STALL_TIMEOUT`` seconds per read before its connection is dropped. Behind a buffering front (the platform's router, a load balancer) that is no concern; for
hooks that wait on I/O, ``gthread`` is the better choice.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import struct
import time
from concurrent import futures
from functools import partial
from typing import Any

from gunicorn.workers.gthread import ThreadWorker, TConn

#: Seconds a socket read or write of a started request may wait for the client before the
#: connection is dropped (gthread waits as long for a new connection's first bytes).
STALL_TIMEOUT = 5.0

#: Requests answered back to back for one connection whose client pipelines them, before the
#: other connections get their turn.
PIPELINE_BURST = 16


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
            record.msg = "dropped a connection whose client sent or read nothing for %.0f s in the middle of a request"
            record.args = (STALL_TIMEOUT,)
            record.exc_info = record.exc_text = None
        return True


class InlineWorker(ThreadWorker):  # type: ignore[misc]
    """A ``gthread`` worker without the pool: requests are handled on the event-loop thread."""

    def init_process(self) -> None:
        logging.getLogger("gunicorn.error").addFilter(_StalledClientRecord())
        super().init_process()

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
        """Answer the connection's request now; return it to the poller (or close it) after."""
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
