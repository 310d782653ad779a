"""The template process (pre-imported interpreter that forks model servers) and the MaxConcurrency slot
limiter, with real processes: a forked `python -m serving`, memory limits, exit reasons,
cross-process slots."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from selfmaker.executors.forker import TemplateError, TemplateProcess, template_request
from selfmaker.features.serverless.limiter import SlotLimiter

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "selfmaker"))
from platform_helpers import build_classifier_tar, find_free_port  # noqa: E402


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.close()


@pytest.fixture(scope="module")
def template(
    loop: asyncio.AbstractEventLoop, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TemplateProcess]:
    run = tmp_path_factory.mktemp("tpl")
    tpl = TemplateProcess(run / "t.sock", run / "template.log")
    loop.run_until_complete(tpl.ensure())
    try:
        yield tpl
    finally:
        loop.run_until_complete(tpl.stop())


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import tarfile

    root = tmp_path_factory.mktemp("model")
    with tarfile.open(build_classifier_tar(root)) as tar:
        tar.extractall(root / "model", filter="data")
    return root / "model"


def wait_answer(url: str, alive: object, timeout: float = 60.0) -> requests.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert alive(), "model server died"  # type: ignore[operator]
        try:
            resp = requests.post(url, data=b"1,2,3,4", headers={"Content-Type": "text/csv"}, timeout=2)
            if resp.status_code == 200:
                return resp
        except requests.RequestException:
            pass
        time.sleep(0.02)
    raise AssertionError(f"{url} did not answer")


def test_ping_reports_the_preloaded_model_server_modules(template: TemplateProcess) -> None:
    answer, fds = template_request(template.socket_path, {"op": "ping"})
    assert fds == [] and answer["pid"] == template.pid
    assert {"numpy", "onnxruntime", "flask", "serving", "serving.cli"} <= set(answer["preloaded"])


def test_forked_model_server_answers_and_stops(
    loop: asyncio.AbstractEventLoop, template: TemplateProcess, model_dir: Path, tmp_path: Path
) -> None:
    port = find_free_port()
    handle = loop.run_until_complete(
        template.spawn(
            instance_id="unit-1",
            module="serving",
            args=["--model-dir", str(model_dir), "--host", "127.0.0.1", "--port", str(port)],
            env={"SAGEMAKER_MODEL_SERVER_WORKERS": "1"},
            cwd=tmp_path,
            log_path=tmp_path / "unit-1.log",
            memory_mb=2048,
        )
    )
    try:
        resp = wait_answer(f"http://127.0.0.1:{port}/invocations", handle.alive)
        assert resp.json()["predictions"][0]["label"] in (0, 1)
        # the server is not a child of this process, and its memory is limited
        assert handle.pid is not None and os.getpgid(handle.pid) == handle.pid
        limit = Path(f"/proc/{handle.pid}/limits").read_text()
        assert str(2048 * 1024 * 1024) in next(line for line in limit.splitlines() if "address space" in line)
    finally:
        loop.run_until_complete(handle.stop(5))
    assert not handle.alive()
    assert loop.run_until_complete(handle.exit_reason()) is None  # stopped on request: no failure reason
    assert "Booting worker" in (tmp_path / "unit-1.log").read_text()


def test_memory_limit_ends_the_server_with_a_reason(
    loop: asyncio.AbstractEventLoop, template: TemplateProcess, tmp_path: Path
) -> None:
    script = tmp_path / "hog.py"
    script.write_text(
        textwrap.dedent("""
        import numpy as np
        print("allocating", flush=True)
        block = np.ones(300 * 1024 * 1024)  # 2.4 GB
        print("allocated", block.nbytes, flush=True)
    """)
    )
    handle = loop.run_until_complete(
        template.spawn(
            instance_id="hog",
            path=str(script),
            args=[],
            env={},
            cwd=tmp_path,
            log_path=tmp_path / "hog.log",
            memory_mb=1024,
        )
    )
    deadline = time.monotonic() + 60
    while handle.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    reason = loop.run_until_complete(handle.exit_reason())
    loop.run_until_complete(handle.stop(1))
    assert reason is not None and "MemorySizeInMB=1024" in reason
    assert "allocated" not in (tmp_path / "hog.log").read_text().replace("allocating", "")


def test_a_crashing_server_reports_its_exit_code(
    loop: asyncio.AbstractEventLoop, template: TemplateProcess, tmp_path: Path
) -> None:
    script = tmp_path / "crash.py"
    script.write_text("import sys\nsys.exit(7)\n")
    handle = loop.run_until_complete(
        template.spawn(
            instance_id="crash",
            path=str(script),
            args=[],
            env={},
            cwd=tmp_path,
            log_path=tmp_path / "crash.log",
            memory_mb=None,
        )
    )
    deadline = time.monotonic() + 30
    while handle.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert loop.run_until_complete(handle.exit_reason()) == "the model server exited with code 7"
    loop.run_until_complete(handle.stop(1))


def test_bad_requests_are_refused(template: TemplateProcess) -> None:
    for payload, needle in (
        ({"op": "fly"}, "unknown op"),
        ({"op": "spawn", "log_path": "/tmp/x"}, "exactly one"),
        ({"op": "status", "pid": 1}, "no child"),
    ):
        with pytest.raises(TemplateError, match=needle):
            template_request(template.socket_path, payload)


def test_slots_are_shared_across_processes(tmp_path: Path) -> None:
    limiter = SlotLimiter(tmp_path / "slots", 3)
    held = [limiter.try_acquire(), limiter.try_acquire()]
    assert None not in held and len(set(held)) == 2
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from selfmaker.features.serverless.limiter import SlotLimiter
        limiter = SlotLimiter(Path({str(tmp_path / "slots")!r}), 3)
        slot = limiter.try_acquire()
        print("slot" if slot is not None else "none", flush=True)
        sys.stdin.readline()
    """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "slot"
            assert limiter.try_acquire() is None  # 2 here + 1 in the other process = capacity
            limiter.release(held[0])
            again = limiter.try_acquire()
            assert again is not None
            limiter.release(again)
        finally:
            holder.kill()  # a dead holder's slot comes back by itself
            holder.wait(10)
    # one slot held here; the killed holder's slot came back: exactly two more fit
    assert limiter.try_acquire() is not None and limiter.try_acquire() is not None
    assert limiter.try_acquire() is None
    limiter.close()


def test_forked_servers_end_when_the_template_is_killed(
    loop: asyncio.AbstractEventLoop, model_dir: Path, tmp_path: Path
) -> None:
    """A SIGKILLed platform takes its template down, and the template's model servers must follow."""
    import signal

    import psutil

    tpl = TemplateProcess(tmp_path / "k.sock", tmp_path / "template.log")
    loop.run_until_complete(tpl.ensure())
    port = find_free_port()
    handle = None
    try:
        handle = loop.run_until_complete(
            tpl.spawn(
                instance_id="orphan-1",
                module="serving",
                args=["--model-dir", str(model_dir), "--host", "127.0.0.1", "--port", str(port)],
                env={"SAGEMAKER_MODEL_SERVER_WORKERS": "1"},
                cwd=tmp_path,
                log_path=tmp_path / "orphan-1.log",
                memory_mb=None,
            )
        )
        wait_answer(f"http://127.0.0.1:{port}/invocations", handle.alive)
        server = psutil.Process(handle.pid)
        assert tpl.pid is not None
        os.kill(tpl.pid, signal.SIGKILL)
        gone, alive = psutil.wait_procs([server], timeout=30)
        assert gone and not alive, "the forked model server outlived its template"
    finally:
        if handle is not None and handle.pid is not None and psutil.pid_exists(handle.pid):
            os.killpg(handle.pid, signal.SIGKILL)
        loop.run_until_complete(tpl.stop())
