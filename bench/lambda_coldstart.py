"""Serverless on AWS Lambda: the function's first answer after a fresh process start (a cold sandbox).

Same run, same machine, same test Lambda Runtime API (tests/lambdakit.py, on 127.0.0.1):

* ``function`` — ``python -m serving.lambda_handler`` (what the image's ``lambda`` mode runs) for the
  built-in XGBoost model (``model.tar.gz`` in moto's S3, unpacked into a fresh /tmp each time), with an
  ALB event queued at process start: process start → the ALB answer (init included, as a cold invoke);
* ``floor``    — the runtime interface client alone with a handler that answers at once
  (``python -m awslambdaric bench.lambda_coldstart.echo``): interpreter + awslambdaric, no model;
* ``warm``     — the next invocations of the same sandbox.

Prints one JSON document with medians, ``function / floor``, the goal (function ≤ 1.0 s), and the CPU
seconds each process used up to its first answer (user + system: what the start costs, whatever else
the machine is doing) with the load average next to them.

    .venv/bin/python -m bench.lambda_coldstart [--reps 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GOAL_SECONDS = 1.0


def echo(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The floor's Lambda handler: an empty ALB answer."""
    return {"statusCode": 200, "isBase64Encoded": False, "body": "", "headers": {}}


def _lambdakit() -> Any:
    spec = importlib.util.spec_from_file_location("lambdakit", ROOT / "tests" / "lambdakit.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["lambdakit"] = module
    spec.loader.exec_module(module)
    return module


def _stop(proc: subprocess.Popen[bytes]) -> float:
    """Stop the sandbox's process group; return the CPU seconds (user + system) the process used."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # its work is done: nothing to shut down gracefully
    except ProcessLookupError:
        pass
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = -signal.SIGKILL
    return usage.ru_utime + usage.ru_stime


def one_cold_start(
    kit: Any,
    work: Path,
    command: list[str],
    env: dict[str, str],
    event: dict[str, Any],
    warm: int = 0,
    timeout: float = 60.0,
) -> tuple[float, float, list[float], dict[str, Any]]:
    """Seconds from process start to the first answer, the process's CPU seconds (to the first answer
    when ``warm`` is 0: robust on a busy machine), the warm answers' seconds, the first answer."""
    with kit.RuntimeApi() as api:
        sandbox_tmp = Path(tempfile.mkdtemp(dir=work, prefix="sandbox-"))
        full_env = {
            **env,
            **kit.lambda_environment(api.address, task_root=str(work), tmp=str(sandbox_tmp)),
            "SELFMAKER_LAMBDA_STATE_DIR": str(sandbox_tmp / "selfmaker"),
        }
        started = time.perf_counter()
        with open(work / "function.log", "ab") as log:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                command,
                cwd=str(work),
                env=full_env,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        try:
            outcome = api.invoke(event, timeout=timeout)
            first = time.perf_counter() - started
            if outcome.kind != "response" or outcome.payload.get("statusCode") != 200:
                raise RuntimeError(f"the function failed: {outcome} (see {work / 'function.log'})")
            warm_times = []
            for _ in range(warm):
                t0 = time.perf_counter()
                api.invoke(event, timeout=timeout)
                warm_times.append(time.perf_counter() - t0)
        finally:
            cpu = _stop(proc)
        return first, cpu, warm_times, outcome.payload


def build_archive(work: Path, kit: Any) -> Path:
    model = kit.build_xgboost_model(work / "model")
    archive = work / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(model.iterdir()):
            tar.add(path, arcname=path.name)
    return archive


def median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    reps = max(1, min(args.reps, 20))
    kit = _lambdakit()

    import boto3
    from moto.server import ThreadedMotoServer

    work = Path(tempfile.mkdtemp(prefix="bench-lambda-"))
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        host, port = moto.get_host_and_port()
        s3_url = f"http://{host}:{port}"
        credentials = {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_SESSION_TOKEN": "bench",
        }
        s3 = boto3.client(
            "s3",
            endpoint_url=s3_url,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )
        s3.create_bucket(Bucket="bench-models")
        s3.upload_file(str(build_archive(work, kit)), "bench-models", "models/xgb/model.tar.gz")
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(ROOT),
            **credentials,
            "AWS_ENDPOINT_URL_S3": s3_url,
            "SELFMAKER_MODEL_DATA": "s3://bench-models/models/xgb/model.tar.gz",
            "SELFMAKER_ENDPOINT_NAME": "bench",
            "SELFMAKER_VARIANT_NAME": "AllTraffic",
        }
        body = ",".join(["0.25"] * kit.N_FEATURES).encode()
        event = kit.alb_event("/endpoints/bench/invocations", body, headers={"Content-Type": "text/csv"})
        function_cmd = [sys.executable, "-m", "serving.lambda_handler"]
        floor_cmd = [sys.executable, "-m", "awslambdaric", "bench.lambda_coldstart.echo"]
        function, floor, warm, function_cpu, floor_cpu = [], [], [], [], []
        answer: dict[str, Any] = {}
        for _ in range(reps):  # interleaved, so a busy moment of the machine hits both
            seconds, cpu, _, _ = one_cold_start(kit, work, floor_cmd, env, event)
            floor.append(seconds)
            floor_cpu.append(cpu)
            seconds, cpu, _, answer = one_cold_start(kit, work, function_cmd, env, event)
            function.append(seconds)
            function_cpu.append(cpu)
        _, _, warm, _ = one_cold_start(kit, work, function_cmd, env, event, warm=10)
        result = {
            "model": (
                f"built-in XGBoost (binary:logistic, 10 trees, {kit.N_FEATURES} features) from moto's S3"
            ),
            "reps": reps,
            "function_first_answer_seconds": [round(s, 4) for s in function],
            "function_median": median(function),
            "floor_seconds": [round(s, 4) for s in floor],
            "floor_median": median(floor),
            "function_cpu_seconds_median": median(function_cpu),
            "floor_cpu_seconds_median": median(floor_cpu),
            "load_average_1min": round(os.getloadavg()[0], 2),
            "cores": os.cpu_count(),
            "warm_invoke_median": median(warm),
            "ratio_function_over_floor": round(median(function) / median(floor), 2),
            "first_answer_status": answer.get("statusCode"),
            f"goal_function_at_most_{GOAL_SECONDS}s": median(function) <= GOAL_SECONDS,
        }
        print(json.dumps(result, indent=2))
    finally:
        moto.stop()
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
