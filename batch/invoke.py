"""Invoking the model: over HTTP (a model server's ``POST /invocations``) or in process (the data plane).

Both give the same bytes: the HTTP server answers with exactly what :class:`serving.dataplane.DataPlane`
returns. An answer in 4xx is a *rejection* (the record is bad; never retried); connection errors,
timeouts and 5xx are *transient* and retried ``InvocationsMaxRetries`` times with backoff.
"""

from __future__ import annotations

import http.client
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

import orjson

from batch.errors import BatchError, ModelServerError
from common.childenv import aws_credentials, child_environment
from common.http import SyncPool, invocation_headers
from common.proc import free_port

log = logging.getLogger(__name__)

#: statuses that mean "try again"
TRANSIENT = {429, 500, 502, 503, 504}


class Rejected(BatchError):
    """The model refused the request (4xx): the input is bad."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class InvocationFailed(BatchError):
    """The model kept failing (5xx, timeouts, connection errors) after every retry."""


class Invoker(Protocol):
    """Something that answers ``invoke(body, content_type, accept) -> bytes``."""

    def invoke(self, body: bytes, content_type: str | None, accept: str | None) -> bytes: ...


def _message(body: bytes) -> str:
    """The ``message`` of a JSON error body, else the body's first line."""
    try:
        data = orjson.loads(body)
        if isinstance(data, dict):
            for key in ("message", "error-message", "error", "Message"):
                if isinstance(data.get(key), str):
                    return data[key][:500]
    except orjson.JSONDecodeError:
        pass
    text = body.decode("utf-8", "replace").strip().splitlines()
    return text[0][:500] if text else "(empty answer)"


class HttpInvoker:
    """POSTs to ``<url>/invocations`` over keep-alive connections (:class:`common.http.SyncPool`).

    Call :meth:`close` when done.
    """

    def __init__(self, url: str, *, timeout: float, retries: int, backoff: float = 0.2) -> None:
        self._pool = SyncPool.for_url(url, timeout=timeout)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff

    def close(self) -> None:
        """Close the idle connections; in-flight ones are closed when their request ends."""
        self._pool.close()

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        """One request, no retry; a kept-alive connection the server closed is replaced once."""
        return self._pool.request(method, path, body, headers)

    def invoke(self, body: bytes, content_type: str | None, accept: str | None) -> bytes:
        """The answer body; :class:`Rejected` on 4xx, :class:`InvocationFailed` after the retries."""
        return self.invoke_typed(body, content_type, accept)[0]

    def invoke_typed(self, body: bytes, content_type: str | None, accept: str | None) -> tuple[bytes, str]:
        """``(answer body, its Content-Type)``; errors as :meth:`invoke`'s."""
        headers = invocation_headers(content_type, accept)
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(2.0, self.backoff * 2 ** (attempt - 1)))
            try:
                status, data, answer_headers = self._pool.exchange("POST", "/invocations", body, headers)
            except (OSError, http.client.HTTPException) as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                continue
            if 200 <= status < 300:
                return data, answer_headers.get("content-type") or "application/octet-stream"
            if status in TRANSIENT:
                last = f"HTTP {status}: {_message(data)}"
                continue
            raise Rejected(status, _message(data))
        raise InvocationFailed(f"the model server failed {self.retries + 1} time(s); last: {last}")

    def execution_parameters(self) -> dict[str, Any]:
        """``GET /execution-parameters`` (``{}`` when the container does not answer it)."""
        try:
            status, data = self.request("GET", "/execution-parameters")
            if status == 200:
                value = orjson.loads(data)
                return value if isinstance(value, dict) else {}
        except (OSError, http.client.HTTPException, orjson.JSONDecodeError):
            pass
        return {}


class ChainInvoker:
    """The containers of an inference pipeline (SageMaker's Serial mode), each a ready model server: a
    record goes to the first; each answer is the next one's request, typed with the answer's Content-Type;
    the job's Accept goes to the last only (the others answer in their default). Errors name the container.
    """

    def __init__(self, stages: list[tuple[str, HttpInvoker]]) -> None:
        self.stages = stages

    def close(self) -> None:
        for _, invoker in self.stages:
            invoker.close()

    def invoke(self, body: bytes, content_type: str | None, accept: str | None) -> bytes:
        """The last container's answer; :class:`Rejected` / :class:`InvocationFailed` naming a container."""
        last = len(self.stages) - 1
        for position, (hostname, invoker) in enumerate(self.stages):
            try:
                body, content_type = invoker.invoke_typed(
                    body, content_type, accept if position == last else None
                )
            except Rejected as exc:
                raise Rejected(exc.status, f"container {hostname}: {exc.message}") from None
            except InvocationFailed as exc:
                raise InvocationFailed(f"container {hostname}: {exc}") from None
        return body

    def execution_parameters(self) -> dict[str, Any]:
        """The first container's (the one that gets the job's records as they are)."""
        return self.stages[0][1].execution_parameters()


#: how a model source names ready pipeline containers (:func:`pipeline_source`)
PIPELINE_PREFIX = "pipeline:"


def pipeline_source(stages: list[tuple[str, str]]) -> str:
    """The model source of a transform job over ready pipeline containers ``(hostname, URL)``, in order:
    ``pipeline:<hostname>=<url> …`` (the workers read it back with :func:`pipeline_stages`)."""
    return PIPELINE_PREFIX + " ".join(f"{hostname}={url}" for hostname, url in stages)


def pipeline_stages(source: str) -> list[tuple[str, str]] | None:
    """``(hostname, URL)`` of the containers of a :func:`pipeline_source`, else None."""
    if not source.startswith(PIPELINE_PREFIX):
        return None
    return [
        (hostname, url)
        for hostname, _, url in (item.partition("=") for item in source[len(PIPELINE_PREFIX) :].split())
    ]


class LocalInvoker:
    """Calls a loaded :class:`serving.dataplane.DataPlane` directly (no HTTP)."""

    def __init__(self, plane: Any, *, retries: int) -> None:
        self.plane = plane
        self.retries = retries

    def invoke(self, body: bytes, content_type: str | None, accept: str | None) -> bytes:
        """The answer body; same errors as :meth:`HttpInvoker.invoke`."""
        from serving.errors import ServingError

        last = ""
        for attempt in range(self.retries + 1):
            try:
                out, _ = self.plane.invoke(body, content_type, accept)
                return out
            except ServingError as exc:
                status = int(exc.status)
                if status < 500 and status not in TRANSIENT:
                    raise Rejected(status, exc.message) from None
                last = f"HTTP {status}: {exc.message}"
            except Exception as exc:  # noqa: BLE001 - user/runtime failure = the server's 500
                log.warning("in-process model failed: %s", exc, exc_info=True)
                last = "HTTP 500: internal error"
            if attempt < self.retries:
                time.sleep(min(2.0, 0.2 * 2**attempt))
        raise InvocationFailed(f"the model failed {self.retries + 1} time(s); last: {last}")

    def execution_parameters(self) -> dict[str, Any]:
        """What this model's server would answer at ``/execution-parameters``."""
        settings = self.plane.settings
        return {
            "MaxConcurrentTransforms": settings.effective_max_concurrent_transforms(),
            "BatchStrategy": settings.batch_strategy,
            "MaxPayloadInMB": settings.max_payload_mb,
        }


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the worker that started us dies (Linux).

    The signal follows the *thread* that forked; the plugin starts servers from the event loop's
    default executor, whose threads live as long as the worker.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def model_source_args(source: str) -> list[str]:
    """``--model-dir DIR`` for a directory, ``--model-data URI`` for an archive or a URI."""
    if source.startswith(("s3://", "file://")) or Path(source).is_file():
        return ["--model-data", source]
    return ["--model-dir", source]


class ModelServerProcess:
    """``python -m serving`` on 127.0.0.1 (contracts §2), started and stopped by PID."""

    def __init__(
        self,
        source: str,
        env: dict[str, str],
        *,
        python: str | None = None,
        startup_timeout: float = 120.0,
        stop_grace: float = 10.0,
    ) -> None:
        self.source = source
        self.env = env
        self.python = python or sys.executable
        self.startup_timeout = startup_timeout
        self.stop_grace = stop_grace
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._log_dir: tempfile.TemporaryDirectory[str] | None = None
        self._log_file: Any = None

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def _log_tail(self) -> str:
        if self._log_dir is None:
            return ""
        try:
            text = (Path(self._log_dir.name) / "server.log").read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-5:])[-800:]

    def start(self) -> ModelServerProcess:
        """Start the server and wait until ``GET /ping`` answers 200 (ModelServerError otherwise)."""
        self._log_dir = tempfile.TemporaryDirectory(prefix="selfmaker-batch-server-")
        self._log_file = open(Path(self._log_dir.name) / "server.log", "ab")  # noqa: SIM115 - closed in stop()
        # an explicit environment (common.childenv); credentials only when the server fetches its model
        env = child_environment(self.env)
        if self.source.startswith("s3://"):
            env.update(aws_credentials())
        self.port = free_port()
        cmd = [
            self.python,
            "-m",
            "serving",
            *model_source_args(self.source),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        # a killed worker must not leave its model server behind
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        probe = HttpInvoker(self.url, timeout=2.0, retries=0)
        try:
            return self._wait_ready(probe)
        finally:
            probe.close()

    def _wait_ready(self, probe: HttpInvoker) -> ModelServerProcess:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self._log_tail()
                self.stop()
                raise ModelServerError(
                    f"the model server exited with code {self.proc.returncode} before it was "
                    f"ready: {tail or last}"
                )
            try:
                status, body = probe.request("GET", "/ping")
                if status == 200:
                    log.info("model server for %s ready at %s (pid %s)", self.source, self.url, self.proc.pid)
                    return self
                last = f"HTTP {status}: {_message(body)}"
            except (OSError, http.client.HTTPException) as exc:
                last = repr(exc)
            time.sleep(0.05)
        tail = self._log_tail()
        self.stop()
        raise ModelServerError(
            f"the model server did not pass /ping within {self.startup_timeout:.0f} s: {last}; {tail}"
        )

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after the grace period; idempotent."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
                proc.wait(timeout=self.stop_grace)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._log_dir is not None:
            self._log_dir.cleanup()
            self._log_dir = None
