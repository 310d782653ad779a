"""What runs on the Dask workers: the model plugin and the part / assembly tasks.

:class:`ModelPlugin` is a ``distributed`` worker plugin registered per job: on every worker (also those
that join later) it loads the model in process or starts a model server subprocess, and it stops the
server when the job unregisters it. Tasks find it by name on their worker. Stop requests reach the
plugin directly (``Client.run``), so tasks check a local flag, not the scheduler.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from distributed import WorkerPlugin, get_worker

from batch import storage
from batch.errors import BatchError, ModelServerError, StoppedError
from batch.invoke import ChainInvoker, HttpInvoker, LocalInvoker, ModelServerProcess, pipeline_stages
from batch.request import TransformSpec
from batch.transform import PartOutcome, PartSpec, PartTransformer

log = logging.getLogger(__name__)

#: seconds between progress events of one task
PROGRESS_EVERY = 0.25


def has_user_code(source: str) -> bool:
    """True when a model directory carries ``code/inference.py`` hooks (they run in a model server)."""
    path = Path(source)
    return path.is_dir() and (path / "code").is_dir() and any((path / "code").glob("*.py"))


class _WorkerState:
    def __init__(self) -> None:
        self.invoker: Any = None
        self.server: ModelServerProcess | None = None
        self.plane: Any = None
        self.mode = ""
        self.stop = threading.Event()


class ModelPlugin(WorkerPlugin):
    """Gives each worker an invoker for the job's model.

    ``mode``: ``url`` (``source`` is a ready model server), ``http`` (start ``python -m serving`` on
    127.0.0.1 per worker), ``inprocess`` (the data plane in the worker), ``auto`` (in process unless the
    model has user code).
    """

    def __init__(
        self,
        name: str,
        source: str,
        *,
        mode: str,
        env: dict[str, str],
        timeout: float,
        retries: int,
        python: str | None = None,
        startup_timeout: float = 120.0,
        s3_endpoint: str | None = None,
    ) -> None:
        self.name = name
        self.s3_endpoint = s3_endpoint
        self.source = source
        self.mode = mode
        self.env = env
        self.timeout = timeout
        self.retries = retries
        self.python = python
        self.startup_timeout = startup_timeout
        # keyed by worker address: with processes=False every worker may share this object
        self._states: dict[str, _WorkerState] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_states"] = {}
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    async def setup(self, worker: Any) -> None:
        await asyncio.to_thread(self._start, worker.address)

    async def teardown(self, worker: Any) -> None:
        await asyncio.to_thread(self._stop, worker.address)

    def _start(self, address: str) -> None:
        if self.s3_endpoint:
            storage.configure_s3(self.s3_endpoint)
        state = _WorkerState()
        with self._lock:
            self._states[address] = state
        mode = self.mode
        if mode == "auto":
            mode = "http" if has_user_code(self.source) else "inprocess"
        if mode == "url":
            stages = pipeline_stages(self.source)
            if stages is None:
                state.invoker = HttpInvoker(self.source, timeout=self.timeout, retries=self.retries)
            else:  # an inference pipeline's containers, in order
                state.invoker = ChainInvoker(
                    [
                        (hostname, HttpInvoker(url, timeout=self.timeout, retries=self.retries))
                        for hostname, url in stages
                    ]
                )
        elif mode == "inprocess":
            from serving.dataplane import DataPlane
            from serving.errors import ModelLoadError
            from serving.settings import ServingSettings

            try:
                # the job's environment as strings: pydantic validates and converts them by alias
                raw: dict[str, Any] = dict(self.env)
                settings = ServingSettings(**raw)
                state.plane = DataPlane(self.source, settings).load()
            except ModelLoadError as exc:
                raise ModelServerError(f"the model could not be loaded: {exc.message}") from None
            if self.mode == "auto" and state.plane.takes_headers:
                # an archive with code/ hooks: user code runs in model servers, not in the workers
                state.plane.close()
                state.plane = None
                mode = "http"
            else:
                state.invoker = LocalInvoker(state.plane, retries=self.retries)
        if mode == "http":
            state.server = ModelServerProcess(
                self.source, self.env, python=self.python, startup_timeout=self.startup_timeout
            ).start()
            state.invoker = HttpInvoker(state.server.url, timeout=self.timeout, retries=self.retries)
        state.mode = mode

    def _stop(self, address: str) -> None:
        with self._lock:
            state = self._states.pop(address, None)
        if state is None:
            return
        state.stop.set()
        if hasattr(state.invoker, "close"):
            state.invoker.close()
        if state.server is not None:
            state.server.stop()
        if state.plane is not None:
            state.plane.close()

    def state(self, address: str) -> _WorkerState:
        """This worker's state (ModelServerError when setup did not run or failed)."""
        with self._lock:
            found = self._states.get(address)
        if found is None or found.invoker is None:
            raise ModelServerError("the model is not available on this worker (model server setup failed)")
        return found


def _plugin(name: str, worker: Any = None) -> tuple[ModelPlugin, _WorkerState, Any]:
    worker = worker or get_worker()
    plugin = worker.plugins.get(name)
    if plugin is None:
        raise ModelServerError("the model plugin is not registered on this worker")
    return plugin, plugin.state(worker.address), worker


def signal_stop(name: str, dask_worker: Any = None) -> bool:
    """Run on every worker by ``Client.run``: ask this job's tasks to stop."""
    plugin = dask_worker.plugins.get(name)
    if plugin is None:
        return False
    with plugin._lock:
        states = list(plugin._states.values())
    for state in states:
        state.stop.set()
    return True


def worker_info(name: str, dask_worker: Any = None) -> dict[str, Any]:
    """Run on a worker by ``Client.run``: the invoker mode and the container's execution parameters."""
    _, state, _ = _plugin(name, dask_worker)
    params = state.invoker.execution_parameters() if hasattr(state.invoker, "execution_parameters") else {}
    return {"mode": state.mode, "execution_parameters": params}


def part_uri(staging: str, part: PartSpec) -> str:
    """Where a part's output is staged."""
    return storage.join_uri(staging, f"parts/{part.file_index:06d}/{part.part_index:06d}.part")


def part_record_uri(staging: str, part: PartSpec) -> str:
    """The completion record of a part (written after its output)."""
    return storage.join_uri(staging, f"parts/{part.file_index:06d}/{part.part_index:06d}.json")


def run_part(
    spec: TransformSpec, part: PartSpec, plugin_name: str, staging: str, topic: str
) -> dict[str, Any]:
    """Dask task: transform one part into its staged output and record it as done; returns the counts."""
    import orjson

    _, state, worker = _plugin(plugin_name)
    if state.stop.is_set():
        raise StoppedError("stopped")
    totals = [0, 0]
    last = [time.monotonic()]

    def progress(records: int, nbytes: int) -> None:
        totals[0] += records
        totals[1] += nbytes
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY:
            last[0] = now
            worker.log_event(topic, {"records": totals[0], "bytes": totals[1]})
            totals[0] = totals[1] = 0

    transformer = PartTransformer(
        spec, part, state.invoker, should_stop=state.stop.is_set, on_progress=progress
    )
    writer = storage.open_writer(part_uri(staging, part))
    try:
        outcome: PartOutcome = transformer.run(writer.write)
    except BaseException:
        writer.abort()
        raise
    writer.commit()
    if totals[0] or totals[1]:
        worker.log_event(topic, {"records": totals[0], "bytes": totals[1]})
    result = asdict(outcome)
    storage.put_bytes(part_record_uri(staging, part), orjson.dumps(result))
    return result


def assemble(parts: list[str], out_uri: str, stop_name: str | None = None) -> int:
    """Dask task: concatenate staged parts (in order) into the final ``.out`` atomically; returns its size."""
    if len(parts) == 1:
        storage.move_or_copy(parts[0], out_uri)
        return 0
    writer = storage.open_writer(out_uri)
    total = 0
    try:
        for uri in parts:
            for chunk in storage.iter_chunks(uri, storage.S3_PART_BYTES):
                writer.write(chunk)
                total += len(chunk)
    except BaseException:
        writer.abort()
        raise
    writer.commit()
    return total


__all__ = ["BatchError", "ModelPlugin", "assemble", "run_part", "signal_stop", "worker_info"]
