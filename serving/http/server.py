"""Runs the flask app under gunicorn: one model (ONNX session) per worker, loaded in the background.

Each worker answers /ping with 503 while its loader thread prepares the model and runs the warm-up
prediction, and with 200 once it *and every other worker* are ready (ready markers in the server's
state directory), so a client that saw 200 never reaches a worker that is still loading. A load
failure is logged with its reason; the worker keeps answering 503 instead of exiting, so gunicorn
does not crash-loop.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from serving.errors import ServingError
from serving.http.worker import InlineWorker
from serving.settings import ServingSettings

log = logging.getLogger(__name__)


#: SELFMAKER_SERVE_WORKER_CLASS -> gunicorn worker class
_WORKER_CLASSES = {"inline": "serving.http.worker.InlineWorker", "gthread": "gthread", "sync": "sync"}


class WorkerReadiness:
    """Ready markers of the workers in ``<state_dir>/ready/<pid>``."""

    def __init__(self, state_dir: Path, expected: int) -> None:
        self.dir = state_dir / "ready"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.expected = expected
        self._all_seen = False
        self.local_ready = False

    def mark_ready(self) -> None:
        """This worker finished loading."""
        (self.dir / str(os.getpid())).touch()
        self.local_ready = True

    def __call__(self) -> bool:
        """True when this worker is ready and all workers have been ready at least once."""
        if not self.local_ready:
            return False
        if self._all_seen:
            return True
        try:
            count = sum(1 for _ in os.scandir(self.dir))
        except OSError:
            return False
        if count >= self.expected:
            self._all_seen = True
        return self._all_seen

    def forget(self, pid: int) -> None:
        """A worker exited (called in the master)."""
        try:
            (self.dir / str(pid)).unlink()
        except FileNotFoundError:
            pass


class ModelServer(BaseApplication):
    """gunicorn application for ``settings`` with the server's private ``state_dir``."""

    def __init__(self, settings: ServingSettings, state_dir: Path) -> None:
        self.settings = settings
        self.state_dir = state_dir
        self.workers = settings.effective_workers()
        self.metrics_dir = str(state_dir / "metrics")
        super().__init__()

    def load_config(self) -> None:
        settings = self.settings
        readiness_dir = WorkerReadiness(self.state_dir, self.workers)

        def child_exit(server: Any, worker: Any) -> None:
            readiness_dir.forget(worker.pid)

        parent_pid = settings.parent_pid

        def when_ready(server: Any) -> None:
            if parent_pid is not None:
                threading.Thread(
                    target=_exit_with_parent, args=(parent_pid,), name="parent-watch", daemon=True
                ).start()

        config = {
            "when_ready": when_ready,
            "bind": [f"{_bracket(settings.effective_host())}:{settings.port}"],
            "workers": self.workers,
            "worker_class": _WORKER_CLASSES[settings.worker_class],
            "threads": settings.threads if settings.worker_class == "gthread" else 1,
            "timeout": settings.timeout,
            "graceful_timeout": 10,
            "keepalive": 5,
            "backlog": 2048,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": settings.log_level.lower(),
            "proc_name": "selfmaker-serve",
            "child_exit": child_exit,
            "limit_request_field_size": 16384,
            # several servers run side by side; gunicorn's control socket would make them collide
            "control_socket_disable": True,
        }
        for key, value in config.items():
            self.cfg.set(key, value)
        # read by the workers forked after this (gunicorn's config has no place for our own keys)
        InlineWorker.read_timeout = settings.read_timeout
        InlineWorker.body_limit = settings.max_payload_bytes()

    def load(self) -> Any:
        """Build the app in the worker and start loading the model in the background."""
        from serving.dataplane import DataPlane
        from serving.http.app import create_app
        from serving.http.response import install as install_one_write_response
        from serving.metrics import Metrics

        install_one_write_response()

        settings = self.settings
        plane = DataPlane(
            settings.model_data or settings.model_dir, settings, state_dir=self.state_dir / "model-source"
        )
        readiness = WorkerReadiness(self.state_dir, self.workers)
        metrics = Metrics(self.metrics_dir)

        def _load() -> None:
            try:
                plane.load()
            except ServingError as exc:
                log.error(
                    "model failed to load: %s", plane.error or exc.message, exc_info=exc.__cause__ is not None
                )
                return
            except Exception:  # a bug in user code or the runtime: log it, keep answering 503
                log.exception("model failed to load")
                return
            readiness.mark_ready()

        threading.Thread(target=_load, name="model-loader", daemon=True).start()
        return create_app(settings, plane, metrics=metrics, ready=readiness)


def _exit_with_parent(parent_pid: int, interval: float = 1.0) -> None:
    """Runs in the gunicorn master: SIGTERM ourselves (a graceful shutdown) once ``parent_pid`` is gone.

    The supervisor starts model servers in their own sessions, so signals to its process group do not
    reach them; without this a SIGKILLed supervisor would leave them running.
    """
    while os.getppid() == parent_pid:
        time.sleep(interval)
    log.warning("parent process %d went away; shutting down", parent_pid)
    os.kill(os.getpid(), signal.SIGTERM)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
