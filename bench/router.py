"""Router overhead: one model server called directly vs through `selfmaker up`, in the same run.

Starts a model server (``python -m serving``) and a ``selfmaker up`` whose endpoint has one instance of the
same model, then drives both with the same closed-loop load (wrk via the anchors' load.sh when
available, else a bounded aiohttp load loop) at concurrency 1 and 8, batch 1. Prints added p50/p99 and
the throughput ratio (goals: <= 1 ms p50 added at concurrency 1, >= 70 % of direct throughput at
concurrency 8; the router shares the 2 cores with the model server and the load generator).

With ``--recording`` it measures instead what recording invocation metrics costs (issue 25's "<= 2 %
throughput"): two ``selfmaker up`` with the same one-instance endpoint, one recording (the default) and one
with ``SELFMAKER_ENDPOINT_METRICS=false``, driven by the same closed-loop load at concurrency 8 in ``--pairs``
adjacent pairs of cells in ABBA order (on off, off on, on off ...), so a linear drift of the shared machine's
speed cancels in the totals; ``--rounds`` times with new platforms started in the other order (two
processes differ by a few % on their own). It prints the throughput ratio recording / not of the totals
(requests served in the same wall time; goal >= 0.98), the per-pair ratios, and the platform process's CPU
per request recording / not (psutil over its PID; its model server is another process). ``--aa`` runs the
same with both platforms recording: the noise floor of two processes.

    .venv/bin/python bench/router.py [--seconds 5] [--reps 3] [--workers 1] [--json out.json]
    .venv/bin/python bench/router.py --recording [--rounds 2] [--pairs 4] [--seconds 5] [--aa] [--json F]
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


def _bench_platform(
    work: Path, name: str, archive: Path, metrics: bool, procs: list[subprocess.Popen[bytes]]
) -> str:
    """Start a ``selfmaker up`` (recording invocation metrics or not) with a one-instance endpoint of the
    model in ``archive``; its runtime URL."""
    import boto3

    port = free_port()
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "SAGEMAKER_MODEL_SERVER_WORKERS": "1",
        "SELFMAKER_ENDPOINT_METRICS": "true" if metrics else "false",
    }
    with open(work / f"{name}.log", "wb") as out:
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "selfmaker", "up", "--home", str(work / name), "--port", str(port)]
                + ["--log-level", "WARNING"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                cwd=str(ROOT),
            )
        )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url + "/ping", procs[-1])
    sm = boto3.client(
        "sagemaker",
        endpoint_url=url,
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
    return f"{url}/endpoints/bench/invocations"


def platform_cpu_seconds(pid: int) -> float:
    """CPU seconds of the ``selfmaker up`` process itself (its model servers are other processes)."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def recording_cost(
    pairs: int, seconds: int, work: Path, *, rounds: int = 2, aa: bool = False
) -> dict[str, Any]:
    """Throughput and the platform's CPU per request at concurrency 8, recording invocation metrics vs not
    (``aa``: both recording, the noise floor), in ``pairs`` adjacent pairs of cells in ABBA order, in each
    of ``rounds`` rounds with new platforms (started in the other order each round: two processes differ
    by more than recording costs, from where they and their model servers landed)."""
    archive = build_model(work)
    payload = work / "row.csv"
    payload.write_text(",".join(f"{v:.4f}" for v in np.random.default_rng(1).normal(size=FEATURES)) + "\n")
    cells: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    loads = []
    for round_ in range(rounds):
        procs: list[subprocess.Popen[bytes]] = []
        try:
            urls, pids = {}, {}
            for label in ("on", "off") if round_ % 2 == 0 else ("off", "on"):
                name = f"{label}-{round_}"
                urls[label] = _bench_platform(work, name, archive, label == "on" or aa, procs)
                pids[label] = procs[-1].pid
            for url in urls.values():  # warm-up
                load(url, payload, 2, 2)
            for pair in range(pairs):
                loads.append(os.getloadavg()[0])
                for label in ("on", "off") if pair % 2 == 0 else ("off", "on"):
                    before = platform_cpu_seconds(pids[label])
                    cell = load(urls[label], payload, 8, seconds)
                    cell["cpu"] = platform_cpu_seconds(pids[label]) - before
                    cells[label].append(cell)
        finally:
            for proc in reversed(procs):
                stop(proc)
    on, off = cells["on"], cells["off"]
    ratios = [a["rps"] / b["rps"] for a, b in zip(on, off, strict=True) if b["rps"]]
    cpu_per_request = {
        label: sum(c["cpu"] for c in runs) / max(1, sum(c["requests"] for c in runs))
        for label, runs in cells.items()
    }
    return {
        "pairs": [
            {
                "on_rps": a["rps"],
                "off_rps": b["rps"],
                "on_cpu_us": a["cpu"] / max(1, a["requests"]) * 1e6,
                "off_cpu_us": b["cpu"] / max(1, b["requests"]) * 1e6,
                "errors": a["errors"] + b["errors"],
            }
            for a, b in zip(on, off, strict=True)
        ],
        "ratios": ratios,
        "ratio_totals": sum(a["rps"] for a in on) / sum(b["rps"] for b in off),
        "ratio_median": statistics.median(ratios),
        "cpu_us_per_request": {k: v * 1e6 for k, v in cpu_per_request.items()},
        "cpu_ratio": cpu_per_request["on"] / cpu_per_request["off"],
        "load_average": [min(loads), max(loads)],
        "tool": on[0]["tool"],
        "aa": aa,
        "rounds": rounds,
    }


def print_recording(r: dict[str, Any], seconds: int) -> None:
    """The figures of :func:`recording_cost`."""
    second = "recording too" if r["aa"] else "not recording"
    for i, p in enumerate(r["pairs"]):
        print(
            f"  pair {i + 1}: recording {p['on_rps']:7.0f} req/s {p['on_cpu_us']:5.0f} us CPU/request   "
            f"{second} {p['off_rps']:7.0f} req/s {p['off_cpu_us']:5.0f} us CPU/request   "
            f"ratio {p['on_rps'] / p['off_rps'] if p['off_rps'] else 0:.3f}   errors {p['errors']}"
        )
    low, high = r["load_average"]
    print(
        f"recording / {second} ({r['tool']}, concurrency 8, {r['rounds']} rounds of platforms, "
        f"{len(r['pairs'])} ABBA pairs of {seconds} s in all, "
        f"load average {low:.1f}-{high:.1f}): throughput of the totals {r['ratio_totals']:.3f} "
        f"(goal >= 0.98), pairs {min(r['ratios']):.3f}-{max(r['ratios']):.3f} (median "
        f"{r['ratio_median']:.3f}); the platform process's CPU per request {r['cpu_ratio']:.3f} "
        f"({r['cpu_us_per_request']['on']:.0f} / {r['cpu_us_per_request']['off']:.0f} us)"
    )


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
    parser.add_argument(
        "--recording", action="store_true", help="measure recording invocation metrics vs not instead"
    )
    parser.add_argument("--pairs", type=int, default=4, help="ABBA pairs per round with --recording (4)")
    parser.add_argument(
        "--rounds", type=int, default=2, help="with --recording: new platforms each round, other order (2)"
    )
    parser.add_argument("--aa", action="store_true", help="with --recording: both platforms recording")
    args = parser.parse_args(argv)
    if args.recording:
        with tempfile.TemporaryDirectory(prefix="selfmaker-bench-recording-") as tmp:
            r = recording_cost(args.pairs, args.seconds, Path(tmp), rounds=args.rounds, aa=args.aa)
        print_recording(r, args.seconds)
        if args.json:
            args.json.write_text(json.dumps(r, indent=2))
        return 0

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
