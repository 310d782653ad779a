"""The template process: imports the model server's heavy modules once, then forks model servers on demand.

Run as ``python -m selfmaker.executors.template --socket PATH [--preload MODULE ...] [--parent-pid PID]``.
A fork of an interpreter that already imported numpy, onnxruntime, flask, gunicorn and ``serving`` skips
the ~1 s of imports a fresh ``python -m serving`` pays, so a serverless cold start is mostly model load.

Control protocol: a Unix stream socket, one request per connection. The client sends one JSON object
ending in a newline and reads one JSON line back.

* ``ping`` → pid, preloaded, failed, children
* ``spawn`` {module | path, args, env (overrides), cwd, log_path, memory_mb, instance_id} → pid, forked_at
  (+ the child's pidfd); ``module`` runs like ``python -m module args``, ``path`` like ``python path args``
* ``status`` {pid} → running, returncode, reason
* ``shutdown`` → nothing (children are left running; the platform stops them)

Every answer has ``ok``; failures carry ``error``. A ``spawn`` answer carries the child's pidfd as
SCM_RIGHTS data so the caller can watch the process without racing PID reuse.

Memory limit (``memory_mb``): the child sets ``RLIMIT_AS`` to that many MiB before it runs the model
server (inherited by gunicorn's workers), so a runaway allocation fails at once instead of swapping the
machine; the template also samples the proportional set size of the child's whole process tree and
kills the tree when it exceeds the limit. Either way ``status`` names the limit in ``reason``.

This module must stay importable without the platform: it imports nothing of selfmaker at module level.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import pkgutil
import resource
import runpy
import selectors
import signal
import socket
import sys
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

#: what a model server imports (``serving`` is walked for its submodules)
DEFAULT_PRELOAD = (
    "numpy",
    "onnxruntime",
    "onnx",
    "flask",
    "werkzeug",
    "orjson",
    "pydantic",
    "pydantic_settings",
    "gunicorn.app.base",
    "gunicorn.arbiter",
    "gunicorn.glogging",
    "gunicorn.workers.sync",
    "gunicorn.workers.gthread",
    "prometheus_client",
    "sagemaker_inference",
    "serving",
)

#: exit code of a child whose model server raised MemoryError to the top
EXIT_OUT_OF_MEMORY = 75
#: log phrases that mean an allocation failed under RLIMIT_AS
_OOM_MARKERS = (
    b"MemoryError",
    b"bad_alloc",
    b"Failed to allocate",
    b"Cannot allocate memory",
    b"can't start new thread",
    b"out of memory",
)
_MAX_REQUEST = 1 << 20
_MAX_FINISHED = 1024
_WATCH_INTERVAL = 0.2


def _log(message: str) -> None:
    # The template has no logging configuration of its own so forked model servers configure theirs
    # from a clean slate; its few lines go to stderr, which the platform collects.
    sys.stderr.write(f"selfmaker-template[{os.getpid()}]: {message}\n")
    sys.stderr.flush()


def preload(modules: list[str]) -> tuple[list[str], dict[str, str]]:
    """Import ``modules`` (and every submodule of a package named in them except ``__main__``s).

    Returns the imported names and ``{name: error}`` for those that failed; failures only cost speed.
    """
    done: list[str] = []
    failed: dict[str, str] = {}

    def one(name: str) -> Any:
        try:
            module = importlib.import_module(name)
        except BaseException as exc:  # noqa: BLE001 - a broken optional module must not kill the template
            failed[name] = f"{type(exc).__name__}: {exc}"
            return None
        done.append(name)
        return module

    for name in modules:
        module = one(name)
        path = getattr(module, "__path__", None)
        if module is None or path is None or name.split(".")[0] not in {"serving"}:
            continue
        for info in pkgutil.walk_packages(path, prefix=f"{name}."):
            if info.name.rsplit(".", 1)[-1] == "__main__" or ".tests" in info.name:
                continue
            one(info.name)
    return done, failed


@dataclass
class Child:
    """A model server forked by the template."""

    pid: int
    instance_id: str
    log_path: str
    memory_mb: int | None
    started: float = field(default_factory=time.monotonic)
    returncode: int | None = None
    reason: str | None = None
    #: how far the memory watch has read the child's log
    log_offset: int = 0


def _tree_memory_mb(pid: int) -> float | None:
    """Proportional set size (RSS when PSS is unavailable) of ``pid`` and its descendants, in MiB."""
    import psutil  # only for memory limits: every fork would inherit it, so it loads when first needed

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0
    for proc in procs:
        try:
            info = proc.memory_full_info()
            total += getattr(info, "pss", 0) or info.rss
        except psutil.Error:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                continue
    return total / (1024 * 1024)


def _log_mentions_oom(path: str, tail: int = 16384) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - tail))
            data = fh.read()
    except OSError:
        return False
    return any(marker in data for marker in _OOM_MARKERS)


def _die_with_parent(parent_pid: int) -> None:  # pragma: no cover - child only
    """Make a forked model server receive SIGTERM when the template exits.

    The template exits when the platform goes away (even after SIGKILL), so this is what keeps a killed
    platform from leaving serverless model servers behind. Linux only; elsewhere the platform's restart
    reaps orphans.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes  # Linux only (see above)

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the template died between fork() and prctl()
        os._exit(1)


class Template:
    """The template server: a single-threaded select loop (forking is only safe without threads)."""

    def __init__(
        self, socket_path: str, preloaded: list[str], failed: dict[str, str], parent_pid: int | None
    ) -> None:
        self.socket_path = socket_path
        self.preloaded = preloaded
        self.failed = failed
        self.parent_pid = parent_pid
        self.children: dict[int, Child] = {}
        self.finished: OrderedDict[int, Child] = OrderedDict()
        self.running = True
        self.selector = selectors.DefaultSelector()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._wake_r, self._wake_w = socket.socketpair()
        self._conn: socket.socket | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def serve(self) -> None:
        """Listen on the socket and answer requests until ``shutdown`` or the parent goes away."""
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
        self.listener.bind(self.socket_path)
        os.chmod(self.socket_path, 0o600)
        self.listener.listen(64)
        self.listener.setblocking(False)
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        # Everything imported so far lives for the template's lifetime: keep the collector away from
        # it so children do not copy those pages by touching their GC headers.
        gc.freeze()
        _log(
            f"ready on {self.socket_path}: {len(self.preloaded)} modules preloaded"
            + (f", {len(self.failed)} failed ({', '.join(sorted(self.failed))})" if self.failed else "")
        )
        next_watch = time.monotonic()
        try:
            while self.running:
                for key, _ in self.selector.select(timeout=_WATCH_INTERVAL):
                    if key.data == "accept":
                        self._accept()
                    else:
                        try:
                            while self._wake_r.recv(4096):
                                pass
                        except BlockingIOError:
                            pass
                self._reap()
                if time.monotonic() >= next_watch:
                    next_watch = time.monotonic() + _WATCH_INTERVAL
                    self._watch()
        finally:
            self.selector.close()
            self.listener.close()
            try:
                os.unlink(self.socket_path)
            except FileNotFoundError:
                pass

    def _on_term(self, *_: Any) -> None:
        self.running = False

    # -- requests --------------------------------------------------------------------------------
    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        self._conn = conn
        with conn:
            conn.setblocking(True)
            conn.settimeout(5.0)
            fds: list[int] = []
            try:
                request = self._read(conn)
                answer, fds = self._handle(request)
            except (ValueError, KeyError, TypeError) as exc:
                answer = {"ok": False, "error": f"bad request: {exc}"}
            except OSError as exc:
                answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            try:
                data = (json.dumps(answer) + "\n").encode()
                if fds:
                    socket.send_fds(conn, [data], fds)
                else:
                    conn.sendall(data)
            except OSError as exc:
                _log(f"could not answer a request: {exc}")
            finally:
                for fd in fds:
                    os.close(fd)

    @staticmethod
    def _read(conn: socket.socket) -> dict[str, Any]:
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            buf += chunk
            if len(buf) > _MAX_REQUEST:
                raise ValueError("request too large")
        request = json.loads(buf)
        if not isinstance(request, dict):
            raise ValueError("request must be a JSON object")
        return request

    def _handle(self, request: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        op = request.get("op")
        if op == "ping":
            return {
                "ok": True,
                "pid": os.getpid(),
                "preloaded": self.preloaded,
                "failed": self.failed,
                "children": len(self.children),
            }, []
        if op == "spawn":
            return self._spawn(request)
        if op == "status":
            return self._status(int(request["pid"])), []
        if op == "shutdown":
            self.running = False
            return {"ok": True}, []
        raise ValueError(f"unknown op {op!r}")

    def _status(self, pid: int) -> dict[str, Any]:
        self._reap()
        child = self.children.get(pid) or self.finished.get(pid)
        if child is None:
            return {"ok": False, "error": f"no child with pid {pid}"}
        return {
            "ok": True,
            "running": child.returncode is None,
            "returncode": child.returncode,
            "reason": child.reason,
            "instance_id": child.instance_id,
        }

    def _spawn(self, request: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        module = str(request.get("module") or "")
        script = str(request.get("path") or "")
        if bool(module) == bool(script):
            raise ValueError("spawn needs exactly one of module and path")
        args = [str(a) for a in request.get("args", [])]
        env = {str(k): str(v) for k, v in (request.get("env") or {}).items()}
        cwd = str(request.get("cwd") or os.getcwd())
        log_path = str(request["log_path"])
        memory_mb = request.get("memory_mb")
        memory_mb = int(memory_mb) if memory_mb is not None else None
        if memory_mb is not None and memory_mb <= 0:
            raise ValueError("memory_mb must be positive")
        instance_id = str(request.get("instance_id", ""))
        os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        sys.stdout.flush()
        sys.stderr.flush()
        template_pid = os.getpid()
        try:
            pid = os.fork()
        except OSError:
            os.close(log_fd)
            raise
        if pid == 0:  # pragma: no cover - runs in the child, which never returns
            _die_with_parent(template_pid)
            self._become_model_server(module or script, bool(script), args, env, cwd, log_fd, memory_mb)
        offset = os.lseek(log_fd, 0, os.SEEK_END)
        os.close(log_fd)
        pidfd = os.pidfd_open(pid)
        self.children[pid] = Child(pid, instance_id, log_path, memory_mb, log_offset=offset)
        return {"ok": True, "pid": pid, "forked_at": time.time()}, [pidfd]

    def _become_model_server(
        self,
        module: str,
        is_path: bool,
        args: list[str],
        env: dict[str, str],
        cwd: str,
        log_fd: int,
        memory_mb: int | None,
    ) -> None:  # pragma: no cover - child only
        code = 1
        try:
            os.setsid()
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            self.selector.close()
            self.listener.close()
            self._wake_r.close()
            self._wake_w.close()
            if self._conn is not None:
                self._conn.close()
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            os.close(devnull)
            os.close(log_fd)
            sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
            sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
            os.chdir(cwd)
            os.environ.update(env)
            # the template's objects stay frozen here too: a collection in the server must not touch (and
            # so copy) their pages
            if memory_mb is not None:
                limit = memory_mb * 1024 * 1024
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            sys.argv = [module, *args]
            try:
                if is_path:
                    runpy.run_path(module, run_name="__main__")
                else:
                    runpy.run_module(module, run_name="__main__", alter_sys=True)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except MemoryError:
                sys.stderr.write(
                    f"selfmaker: the model server ran out of memory under its limit of {memory_mb} MB "
                    "(MemorySizeInMB)\n"
                )
                code = EXIT_OUT_OF_MEMORY
        except BaseException:  # noqa: BLE001 - the child must always end in os._exit
            try:
                traceback.print_exc()
            except BaseException:  # noqa: BLE001
                pass
            code = 1
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    # -- children --------------------------------------------------------------------------------
    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue
            child.returncode = os.waitstatus_to_exitcode(status)
            if (
                child.reason is None
                and child.memory_mb is not None
                and (
                    child.returncode == EXIT_OUT_OF_MEMORY
                    or (child.returncode != 0 and _log_mentions_oom(child.log_path))
                )
            ):
                child.reason = (
                    f"the model server ran out of memory under MemorySizeInMB={child.memory_mb} "
                    f"(exit code {child.returncode})"
                )
            if child.reason is None and child.returncode not in (0, -signal.SIGTERM, -signal.SIGKILL):
                child.reason = f"the model server exited with code {child.returncode}"
            self.finished[pid] = child
            while len(self.finished) > _MAX_FINISHED:
                self.finished.popitem(last=False)

    def _watch(self) -> None:
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            _log("the platform went away; exiting")
            self.running = False
            return
        for child in list(self.children.values()):
            if child.memory_mb is None or child.reason is not None:
                continue
            used = _tree_memory_mb(child.pid)
            if used is not None and used > child.memory_mb:
                child.reason = (
                    f"the model server used {used:.0f} MB, more than MemorySizeInMB={child.memory_mb}; "
                    "it was killed"
                )
            elif self._log_shows_oom(child):
                # an allocation failed under RLIMIT_AS: servers that catch it (and keep answering /ping 503)
                # would otherwise sit there until the startup deadline
                child.reason = (
                    f"the model server ran out of memory under MemorySizeInMB={child.memory_mb} "
                    "(an allocation failed; see its log); it was stopped"
                )
            else:
                continue
            _log(f"{child.instance_id or child.pid}: {child.reason}")
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    @staticmethod
    def _log_shows_oom(child: Child) -> bool:
        """Whether the child's log gained an out-of-memory line since the last look."""
        try:
            with open(child.log_path, "rb") as fh:
                fh.seek(child.log_offset)
                data = fh.read(1 << 20)
        except OSError:
            return False
        if not data:
            return False
        # keep a little overlap so a marker split across two reads is still seen
        child.log_offset += max(0, len(data) - 64)
        return any(marker in data for marker in _OOM_MARKERS)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the template process."""
    parser = argparse.ArgumentParser(
        prog="python -m selfmaker.executors.template", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--socket", required=True, help="Unix socket path to listen on")
    parser.add_argument("--preload", nargs="*", default=None, help="modules to import up front")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this parent goes away")
    ns = parser.parse_args(argv)
    started = time.perf_counter()
    done, failed = preload(list(DEFAULT_PRELOAD if ns.preload is None else ns.preload))
    _log(f"preloaded in {time.perf_counter() - started:.2f}s")
    Template(ns.socket, done, failed, ns.parent_pid).serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
