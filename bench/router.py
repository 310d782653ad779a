"""Router overhead: one model server called directly vs through `selfmaker up`, in the same run.

Starts a model server (``python -m serving``) and a ``selfmaker up`` whose endpoint has one instance of the
same model, then drives both with the same closed-loop load (wrk via the anchors' load.sh when
available, else a bounded aiohttp load loop) at concurrency 1 and 8, batch 1. Prints added p50/p99 and
the throughput ratio (goals: <= 1 ms p50 added at concurrency 1, >= 70 % of direct throughput at
concurrency 8; the router shares the 2 cores with the model server and the load generator).

    .venv/bin/python bench/router.py [--seconds 5] [--reps 3] [--workers 1] [--json out.json]
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
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import ANCHORS, build_classifier_tar, free_port  # noqa: E402
from common.archives import safe_extract  # noqa: E402

LOAD_SH = ANCHORS / "load.sh"
FEATURES = 20


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def build_model(dest: Path) -> Path:
    """The small classifier as model.tar.gz, also unpacked to ``dest/model`` for the direct server."""
    archive = build_classifier_tar(dest, FEATURES)
    safe_extract(archive, dest / "model")
    return archive


def load_wrk(url: str, payload: Path, concurrency: int, seconds: int) -> dict[str, Any]:
    out = subprocess.run(
        ["bash", str(LOAD_SH), url, str(payload), str(concurrency), str(seconds), "text/csv", "1"],
        check=True,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    data = json.loads(out.stdout.strip().splitlines()[-1])
    errors = sum(
        data.get(k, 0) for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout")
    )
    return {
        "rps": data["rps"],
        "p50_ms": data["p50_ms"],
        "p99_ms": data["p99_ms"],
        "requests": data["requests"],
        "errors": errors,
        "tool": "wrk",
    }


async def _load_aiohttp(url: str, body: bytes, concurrency: int, seconds: float) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    max_requests = 2_000_000

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.monotonic() < deadline and len(latencies) < max_requests:
            start = time.perf_counter()
            async with session.post(url, data=body, headers={"Content-Type": "text/csv"}) as resp:
                await resp.read()
                if resp.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - start)

    started = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1e3,
        "requests": len(latencies),
        "errors": errors,
        "tool": "aiohttp",
    }


def load(url: str, payload: Path, concurrency: int, seconds: int) -> dict[str, Any]:
    if LOAD_SH.exists() and shutil.which("wrk"):
        return load_wrk(url, payload, concurrency, seconds)
    return asyncio.run(_load_aiohttp(url, payload.read_bytes(), concurrency, seconds))


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=5, help="seconds per measurement (default 5)")
    parser.add_argument(
        "--reps", type=int, default=3, help="interleaved repetitions, medians reported (default 3)"
    )
    parser.add_argument("--workers", type=int, default=1, help="model server worker processes (default 1)")
    parser.add_argument("--worker-class", default=None, help="SELFMAKER_SERVE_WORKER_CLASS for both servers")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    import boto3

    work = Path(tempfile.mkdtemp(prefix="selfmaker-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    env = {
        **os.environ,
        "SAGEMAKER_MODEL_SERVER_WORKERS": str(args.workers),
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    if args.worker_class:
        env["SELFMAKER_SERVE_WORKER_CLASS"] = args.worker_class
    try:
        archive = build_model(work)
        payload = work / "row.csv"
        payload.write_text(
            ",".join(f"{v:.4f}" for v in np.random.default_rng(1).normal(size=FEATURES)) + "\n"
        )

        direct_port, up_port = free_port(), free_port()
        with open(work / "direct.log", "wb") as out:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "serving",
                        "--model-dir",
                        str(work / "model"),
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(direct_port),
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            )
        wait_ready(f"http://127.0.0.1:{direct_port}/ping", procs[-1])
        with open(work / "up.log", "wb") as out:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "selfmaker",
                        "up",
                        "--home",
                        str(work / "home"),
                        "--port",
                        str(up_port),
                        "--log-level",
                        "WARNING",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    cwd=str(ROOT),
                )
            )
        up = f"http://127.0.0.1:{up_port}"
        wait_ready(up + "/ping", procs[-1])
        sm = boto3.client(
            "sagemaker",
            endpoint_url=up,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )
        sm.create_model(
            ModelName="bench", PrimaryContainer={"Image": "selfmaker", "ModelDataUrl": archive.as_uri()}
        )
        sm.create_endpoint_config(
            EndpointConfigName="bench",
            ProductionVariants=[
                {
                    "VariantName": "AllTraffic",
                    "ModelName": "bench",
                    "InstanceType": "ml.m5.large",
                    "InitialInstanceCount": 1,
                }
            ],
        )
        sm.create_endpoint(EndpointName="bench", EndpointConfigName="bench")
        sm.get_waiter("endpoint_in_service").wait(
            EndpointName="bench", WaiterConfig={"Delay": 0.25, "MaxAttempts": 240}
        )

        targets = {
            "direct": f"http://127.0.0.1:{direct_port}/invocations",
            "selfmaker": f"{up}/endpoints/bench/invocations",
        }
        load_before = os.getloadavg()[0]
        for url in targets.values():  # warm-up
            load(url, payload, 2, 2)
        samples: dict[str, list[dict[str, Any]]] = {}
        for rep in range(args.reps):  # interleaved, so background load hits both targets alike
            for concurrency in (1, 8):
                order = list(targets.items()) if rep % 2 == 0 else list(reversed(targets.items()))
                for label, url in order:
                    samples.setdefault(f"{label}@{concurrency}", []).append(
                        load(url, payload, concurrency, args.seconds)
                    )
        results: dict[str, dict[str, Any]] = {}
        for key, runs in samples.items():  # median of the repetitions, metric by metric
            results[key] = {
                metric: statistics.median(r[metric] for r in runs)
                for metric in ("rps", "p50_ms", "p99_ms", "requests")
            }
            results[key].update(errors=sum(r["errors"] for r in runs), tool=runs[0]["tool"], reps=len(runs))
        summary = {
            "added_p50_ms_conc1": results["selfmaker@1"]["p50_ms"] - results["direct@1"]["p50_ms"],
            "added_p99_ms_conc1": results["selfmaker@1"]["p99_ms"] - results["direct@1"]["p99_ms"],
            "added_p50_ms_conc8": results["selfmaker@8"]["p50_ms"] - results["direct@8"]["p50_ms"],
            "added_p99_ms_conc8": results["selfmaker@8"]["p99_ms"] - results["direct@8"]["p99_ms"],
            "throughput_ratio_conc8": results["selfmaker@8"]["rps"] / results["direct@8"]["rps"],
            "throughput_ratio_conc1": results["selfmaker@1"]["rps"] / results["direct@1"]["rps"],
        }
        print(
            f"model server workers: {args.workers}, {args.reps} x {args.seconds}s per cell (median), "
            f"batch 1, tool {results['direct@1']['tool']}, load average before: {load_before:.1f}"
        )
        print(f"{'target':<16}{'conc':>5}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
        for key, r in results.items():
            label, conc = key.split("@")
            print(
                f"{label:<16}{conc:>5}{r['rps']:>10.1f}{r['p50_ms']:>9.3f}{r['p99_ms']:>9.3f}{r['errors']:>8}"
            )
        print(
            f"added p50 at concurrency 1: {summary['added_p50_ms_conc1']:.3f} ms (goal <= 1 ms); "
            f"added p99: {summary['added_p99_ms_conc1']:.3f} ms"
        )
        print(
            f"added p50 at concurrency 8: {summary['added_p50_ms_conc8']:.3f} ms; "
            f"added p99: {summary['added_p99_ms_conc8']:.3f} ms"
        )
        print(
            f"throughput through selfmaker at concurrency 8: {summary['throughput_ratio_conc8']:.1%} of "
            f"direct (goal >= 70%); at concurrency 1: {summary['throughput_ratio_conc1']:.1%}"
        )
        if args.json:
            args.json.write_text(json.dumps({"results": results, "summary": summary}, indent=2))
        return 0
    finally:
        for proc in reversed(procs):
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
