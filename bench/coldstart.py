"""Cold start to the first answer of a small ONNX model: template fork vs plain spawn (vs a container).

All in the same run, same model (logistic regression, 20 features, built here), same machine:

* ``spawn``   — ``python -m serving --model-dir DIR`` as a new process, timed by the anchors'
  ``coldstart.py`` (exec → first 200 of ``POST /invocations``) when the anchors exist
  (``bench.harness.ANCHORS``), else
  by the same loop here;
* ``fork``    — the serverless template (numpy, onnxruntime, flask, gunicorn, ``serving`` pre-imported)
  forks the same command line; spawn request → first 200 of ``POST /invocations``;
* ``platform``— a serverless endpoint of ``selfmaker up`` after it scaled to zero: boto3 InvokeEndpoint →
  answer (router, cold start, /ping wait and invocation included);
* ``first call`` — what a new user does: ``selfmaker up``, a serverless endpoint created at once, and the
  first InvokeEndpoint as soon as it is InService (fresh platform each rep; goal ≤ 0.5 s);
* ``container`` — ``podman``/``docker run <image> serve`` with the model mounted at /opt/ml/model, when an
  engine and the image (``localhost/selfmaker:latest`` or ``--image``) exist; otherwise reported as absent.

Prints one JSON document with medians and the ratio spawn / fork (goal: fork <= 1 s to the first answer).

    .venv/bin/python -m bench.coldstart [--reps 5] [--image localhost/selfmaker:latest] [--no-platform]
                                       [--first-call-only]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from bench.harness import ANCHORS
from common.proc import EngineError, detect_engine, free_port

ROOT = Path(__file__).resolve().parent.parent
ANCHOR = ANCHORS / "coldstart.py"
BODY = ",".join(["0.5"] * 20).encode()


def post_status(url: str) -> int | None:
    request = urllib.request.Request(url, data=BODY, headers={"Content-Type": "text/csv"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=2) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return None


def wait_first_answer(url: str, started: float, timeout: float, alive: Any = None) -> float | None:
    """Seconds from ``started`` to the first 200 of POST ``url`` (polling every 5 ms), or None."""
    while time.perf_counter() - started < timeout:
        if post_status(url) == 200:
            return time.perf_counter() - started
        if alive is not None and not alive():
            return None
        time.sleep(0.005)
    return None


def build_model(dest: Path) -> Path:
    """A logistic regression over 20 features as model.onnx + signature.json in ``dest``."""
    import numpy as np
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 20)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = LogisticRegression().fit(x, y)
    onx = to_onnx(model, x[:1], options={id(model): {"zipmap": False}}, target_opset=17)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "model.onnx").write_bytes(onx.SerializeToString())
    (dest / "signature.json").write_text(
        json.dumps(
            {
                "format": 1,
                "framework": "sklearn",
                "task": "binary_classification",
                "classes": [0, 1],
                "inputs": [{"name": onx.graph.input[0].name, "dtype": "float32", "shape": [None, 20]}],
            }
        )
    )
    return dest


def serve_cmd(model_dir: Path, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "serving",
        "--model-dir",
        str(model_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


ENV = {"SAGEMAKER_MODEL_SERVER_WORKERS": "1"}


def measure_spawn(model_dir: Path, reps: int, timeout: float) -> list[float | None]:
    """Plain ``python -m serving``: the anchors' coldstart.py if present, else the same loop here."""
    port = free_port()
    env = {**os.environ, **ENV, "PYTHONPATH": str(ROOT)}
    if ANCHOR.exists():
        out = subprocess.run(
            [
                sys.executable,
                str(ANCHOR),
                "--url",
                f"http://127.0.0.1:{port}/ping",
                "--reps",
                str(reps),
                "--timeout",
                str(timeout),
                "--post-url",
                f"http://127.0.0.1:{port}/invocations",
                "--post-file",
                str(model_dir / "body.csv"),
                "--post-type",
                "text/csv",
                "--",
                *serve_cmd(model_dir, port),
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=str(ROOT),
            timeout=timeout * reps + 120,
            check=True,
        )
        return list(json.loads(out.stdout.strip().splitlines()[-1])["post_reps"])
    results: list[float | None] = []
    for _ in range(reps):
        started = time.perf_counter()
        proc = subprocess.Popen(
            serve_cmd(model_dir, port),
            env=env,
            cwd=str(ROOT),
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            results.append(
                wait_first_answer(
                    f"http://127.0.0.1:{port}/invocations",
                    started,
                    timeout,
                    lambda proc=proc: proc.poll() is None,
                )
            )
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
    return results


def measure_fork(model_dir: Path, reps: int, timeout: float, work: Path) -> tuple[list[float | None], float]:
    """Forks of the pre-imported template; also returns the template's own start-up time (paid once)."""
    from selfmaker.executors.forker import TemplateProcess

    async def run() -> tuple[list[float | None], float]:
        template = TemplateProcess(work / "t.sock", work / "template.log")
        started = time.perf_counter()
        await template.ensure()
        template_seconds = time.perf_counter() - started
        results: list[float | None] = []
        try:
            for rep in range(reps):
                port = free_port()
                started = time.perf_counter()
                handle = await template.spawn(
                    instance_id=f"bench-{rep}",
                    module="serving",
                    args=serve_cmd(model_dir, port)[3:],
                    env={**ENV, "SAGEMAKER_BIND_TO_PORT": str(port)},
                    cwd=work,
                    log_path=work / f"fork-{rep}.log",
                    memory_mb=None,
                )
                try:
                    results.append(
                        await asyncio.to_thread(
                            wait_first_answer,
                            f"http://127.0.0.1:{port}/invocations",
                            started,
                            timeout,
                            handle.alive,
                        )
                    )
                finally:
                    await handle.stop(10)
        finally:
            await template.stop()
        return results, template_seconds

    return asyncio.run(run())


def measure_platform(model_dir: Path, reps: int, timeout: float, work: Path) -> list[float | None]:
    """InvokeEndpoint on a serverless endpoint of `selfmaker up` after each scale to zero."""
    import tarfile

    import boto3
    from botocore.config import Config

    archive = work / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("model.onnx", "signature.json"):
            tar.add(model_dir / name, arcname=name)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "SELFMAKER_SERVERLESS_IDLE_TIMEOUT": "0.5"}
    log = open(work / "up.log", "ab")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [sys.executable, "-m", "selfmaker", "up", "--home", str(work / "home"), "--port", str(port)],
        env=env,
        cwd=str(ROOT),
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    results: list[float | None] = []
    try:
        deadline = time.monotonic() + 60
        while post_status_get(url + "/ping") != 200:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"selfmaker up did not start (see {work / 'up.log'})")
            time.sleep(0.05)
        kwargs: dict[str, Any] = dict(
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
            config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
        )
        sm, smr = boto3.client("sagemaker", **kwargs), boto3.client("sagemaker-runtime", **kwargs)
        sm.create_model(
            ModelName="cs",
            PrimaryContainer={"Image": "selfmaker", "ModelDataUrl": archive.as_uri()},
            ExecutionRoleArn="arn:aws:iam::123456789012:role/bench",
        )
        sm.create_endpoint_config(
            EndpointConfigName="cs",
            ProductionVariants=[
                {
                    "VariantName": "AllTraffic",
                    "ModelName": "cs",
                    "ServerlessConfig": {"MemorySizeInMB": 2048, "MaxConcurrency": 4},
                }
            ],
        )
        sm.create_endpoint(EndpointName="cs", EndpointConfigName="cs")
        sm.get_waiter("endpoint_in_service").wait(
            EndpointName="cs", WaiterConfig={"Delay": 0.25, "MaxAttempts": 400}
        )
        # one unmeasured request: it also waits for the template, which the platform starts in the
        # background when the first serverless variant is deployed
        smr.invoke_endpoint(EndpointName="cs", Body=BODY, ContentType="text/csv")
        for _ in range(reps):
            while 'selfmaker_serverless_instances{endpoint="cs",variant="AllTraffic"} 0' not in metrics(url):
                time.sleep(0.1)
            started = time.perf_counter()
            smr.invoke_endpoint(EndpointName="cs", Body=BODY, ContentType="text/csv")
            results.append(time.perf_counter() - started)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
    return results


def measure_first_call(model_dir: Path, reps: int, work: Path) -> list[dict[str, float]]:
    """What a new user sees: `selfmaker up`, a serverless endpoint created at once, and the first
    InvokeEndpoint as soon as it is InService (a fresh platform each rep). Returns per rep the seconds of
    start → /ping, create → InService, and the first call."""
    import tarfile

    import boto3
    from botocore.config import Config

    archive = work / "model-first.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("model.onnx", "signature.json"):
            tar.add(model_dir / name, arcname=name)
    out: list[dict[str, float]] = []
    for rep in range(reps):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = open(work / f"up-first-{rep}.log", "ab")  # noqa: SIM115 - closed in finally
        started = time.perf_counter()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "selfmaker",
                "up",
                "--home",
                str(work / f"home-first-{rep}"),
                "--port",
                str(port),
            ],
            env=dict(os.environ),
            cwd=str(ROOT),
            start_new_session=True,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while post_status_get(url + "/ping") != 200:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"selfmaker up did not start (see {work / f'up-first-{rep}.log'})")
                time.sleep(0.02)
            up = time.perf_counter() - started
            kwargs: dict[str, Any] = dict(
                endpoint_url=url,
                region_name="us-east-1",
                aws_access_key_id="bench",
                aws_secret_access_key="bench",
                config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
            )
            sm, smr = boto3.client("sagemaker", **kwargs), boto3.client("sagemaker-runtime", **kwargs)
            created = time.perf_counter()
            sm.create_model(
                ModelName="first",
                ExecutionRoleArn="arn:aws:iam::123456789012:role/bench",
                PrimaryContainer={"Image": "selfmaker", "ModelDataUrl": archive.as_uri()},
            )
            sm.create_endpoint_config(
                EndpointConfigName="first",
                ProductionVariants=[
                    {
                        "VariantName": "AllTraffic",
                        "ModelName": "first",
                        "ServerlessConfig": {"MemorySizeInMB": 2048, "MaxConcurrency": 4},
                    }
                ],
            )
            sm.create_endpoint(EndpointName="first", EndpointConfigName="first")
            deadline = time.monotonic() + 120
            while sm.describe_endpoint(EndpointName="first")["EndpointStatus"] != "InService":
                if time.monotonic() > deadline:
                    raise RuntimeError("the endpoint did not go InService")
                time.sleep(0.02)
            in_service = time.perf_counter() - created
            t0 = time.perf_counter()
            smr.invoke_endpoint(EndpointName="first", Body=BODY, ContentType="text/csv")
            out.append(
                {
                    "up_seconds": round(up, 3),
                    "create_to_in_service_seconds": round(in_service, 3),
                    "first_call_seconds": round(time.perf_counter() - t0, 4),
                }
            )
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            log.close()
    return out


def post_status_get(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return None


def metrics(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        return resp.read().decode()


def measure_container(
    model_dir: Path, reps: int, timeout: float, image: str
) -> tuple[list[float | None] | None, str]:
    """``<engine> run <image> serve`` with the model mounted; (None, why) when it cannot run here."""
    try:
        engine = detect_engine()
    except EngineError as exc:
        return None, f"no container engine ({exc})"
    if (
        subprocess.run(
            [engine, "image", "exists", image] if "podman" in engine else [engine, "image", "inspect", image],
            capture_output=True,
            timeout=60,
        ).returncode
        != 0
    ):
        return None, f"image {image} not built"
    results: list[float | None] = []
    for _ in range(reps):
        port = free_port()
        name = f"coldstart-{uuid.uuid4().hex[:8]}"
        started = time.perf_counter()
        proc = subprocess.Popen(
            [
                engine,
                "run",
                "--rm",
                "--name",
                name,
                "-p",
                f"127.0.0.1:{port}:8080",
                "-v",
                f"{model_dir}:/opt/ml/model:ro",
                image,
                "serve",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            results.append(
                wait_first_answer(
                    f"http://127.0.0.1:{port}/invocations",
                    started,
                    timeout,
                    lambda proc=proc: proc.poll() is None,
                )
            )
        finally:
            subprocess.run([engine, "rm", "-f", name], capture_output=True, timeout=60)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
    return results, engine


def median(values: list[float | None] | None) -> float | None:
    ok = [v for v in values or [] if v is not None]
    return round(statistics.median(ok), 4) if ok else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--image", default="localhost/selfmaker:latest")
    parser.add_argument("--no-platform", action="store_true")
    parser.add_argument("--no-container", action="store_true")
    parser.add_argument(
        "--first-call-only",
        action="store_true",
        help="only the first call after `selfmaker up` and InService (goal <= 0.5 s)",
    )
    args = parser.parse_args(argv)
    reps = max(1, min(args.reps, 20))
    work = Path(tempfile.mkdtemp(prefix="bench-coldstart-"))
    try:
        model_dir = build_model(work / "model")
        (model_dir / "body.csv").write_bytes(BODY)
        first = measure_first_call(model_dir, reps if args.first_call_only else min(reps, 3), work)
        first_median = median([r["first_call_seconds"] for r in first])
        if args.first_call_only:
            print(
                json.dumps(
                    {
                        "first_call_after_up": first,
                        "first_call_median": first_median,
                        "goal_first_call_at_most_0.5s": first_median is not None and first_median <= 0.5,
                    },
                    indent=2,
                )
            )
            return 0
        spawn = measure_spawn(model_dir, reps, args.timeout)
        fork, template_seconds = measure_fork(model_dir, reps, args.timeout, work)
        platform = None if args.no_platform else measure_platform(model_dir, reps, args.timeout, work)
        container, container_note = (
            (None, "skipped")
            if args.no_container
            else measure_container(model_dir, reps, args.timeout, args.image)
        )
        result = {
            "model": "logistic regression, 20 features (ONNX)",
            "reps": reps,
            "spawn_seconds": spawn,
            "spawn_median": median(spawn),
            "fork_seconds": fork,
            "fork_median": median(fork),
            "template_startup_seconds_paid_once": round(template_seconds, 3),
            "platform_invoke_after_scale_to_zero_seconds": platform,
            "platform_median": median(platform),
            "container_seconds": container,
            "container_median": median(container),
            "container_engine": container_note,
        }
        spawn_m, fork_m = median(spawn), median(fork)
        result["ratio_spawn_over_fork"] = round(spawn_m / fork_m, 1) if spawn_m and fork_m else None
        result["goal_fork_at_most_1s"] = fork_m is not None and fork_m <= 1.0
        result["first_call_after_up"] = first
        result["first_call_median"] = first_median
        result["goal_first_call_at_most_0.5s"] = first_median is not None and first_median <= 0.5
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
