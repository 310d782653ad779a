"""Model-server benchmark: in-process limit, HTTP floor, our server over HTTP, and the anchors.

    .venv/bin/python -m bench.serving                 # short default run (~2-3 min)
    .venv/bin/python -m bench.serving --seconds 5 --full --out results.json

1. builds the models with the anchors' make_models.py (``bench.harness.ANCHORS``) (small =
LogisticRegression/20 features,
   medium = 100-tree GradientBoosting/50 features; ``--medium mlp`` for the 256-256 MLP);
2. in-process limit: ``DataPlane.invoke`` (decode + onnxruntime + encode) in a loop, batch 1/64/512,
   CSV/JSON/npy bodies;
3. starts ``python -m serving`` on 127.0.0.1 (default workers = cores) and measures the HTTP floor
   (GET /ping at concurrency 8) and POST /invocations at concurrency 1/8/32 x batch 1/64/512 x formats,
   and the runtime path the gateway forwards (POST /endpoints/<name>/invocations) next to /invocations;
4. anchors in the same run (``--anchors``): a naive flask app under gunicorn (2 sync workers) and, if a
   venv with multi-model-server and Java exists (``--mms-venv``), the SageMaker toolkit on MMS;
5. RecordIO-protobuf (the SDK's linear-learner default) next to CSV: the small model's batch-64 body
   as dense Float32 records, in-process and over HTTP at concurrency 8, and in the goal reps as adjacent
   cells with the batch-64 CSV one (goal: recordio >= 0.8 x CSV);
6. prints rows/s, p50/p99 and the goal ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.harness import ANCHORS, CONTENT_TYPES, LoadResult, free_port, load, start, timed_loop, wait_ready

ROOT = Path(__file__).resolve().parent.parent
BATCHES = (1, 64, 512)
#: The server measured is told it serves this endpoint, as the gateway's instances are (runtime path).
BENCH_ENDPOINT = "bench"
FORMATS = ("csv", "json", "npy")
#: the RecordIO-protobuf cells: (batch, format, concurrency) of the small model, compared with CSV
RECORDIO_CELLS = [(64, "recordio", 8)]


def build_models(art: Path, medium: str) -> dict[str, dict[str, Any]]:
    """Run the anchors' make_models.py; return {"small": ..., "medium": ...} with model dirs and payloads."""
    if not (art / "manifest.json").is_file():
        subprocess.run(
            [sys.executable, str(ANCHORS / "make_models.py"), str(art)],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=900,
        )
    manifest = json.loads((art / "manifest.json").read_text())
    models = {}
    for role, name in (("small", "small"), ("medium", medium)):
        model_dir = art / "dirs" / name
        model_dir.mkdir(parents=True, exist_ok=True)
        target = model_dir / "model.onnx"
        if not target.exists():
            target.symlink_to((art / manifest["models"][name]["onnx"]).resolve())
        models[role] = {
            "name": name,
            "dir": model_dir,
            "payloads": art / "payloads",
            "onnx": target.resolve(),
        }
    return models


def payload(model: dict[str, Any], batch: int, fmt: str) -> Path:
    return model["payloads"] / f"{model['name']}_b{batch}.{fmt}"


def write_recordio_payloads(model: dict[str, Any]) -> None:
    """The model's CSV payloads as dense float32 RecordIO-protobuf records (what the SDK's
    RecordSerializer sends), next to them: ``<name>_b<batch>.recordio``."""
    from common import recordio
    from serving import codecs

    for batch in BATCHES:
        table = codecs.decode_csv(payload(model, batch, "csv").read_bytes())
        payload(model, batch, "recordio").write_bytes(recordio.encode_dense(table))


def in_process(models: dict[str, dict[str, Any]], seconds: float, roles: list[str]) -> dict[str, Any]:
    """decode + ORT + encode without HTTP, one thread, ORT intra-op threads as one server worker has."""
    from serving.dataplane import DataPlane
    from serving.settings import ServingSettings

    results: dict[str, Any] = {}
    cores = ServingSettings().cores()
    for role in roles:
        model = models[role]
        plane = DataPlane(model["dir"], ServingSettings(workers=cores)).load()
        for batch in BATCHES:
            for fmt in FORMATS:
                body = payload(model, batch, fmt).read_bytes()
                ctype = CONTENT_TYPES[fmt]
                calls, p50, p99, _ = timed_loop(
                    lambda plane=plane, body=body, ctype=ctype: plane.invoke(body, ctype, None), seconds
                )
                results[f"{role}/b{batch}/{fmt}"] = {
                    "rows_s": calls * batch,
                    "calls_s": calls,
                    "p50_ms": p50,
                    "p99_ms": p99,
                }
        if role == "small":
            for batch, fmt, _ in RECORDIO_CELLS:
                body = payload(model, batch, fmt).read_bytes()
                ctype = CONTENT_TYPES[fmt]
                calls, p50, p99, _ = timed_loop(
                    lambda plane=plane, body=body, ctype=ctype: plane.invoke(body, ctype, None), seconds
                )
                results[f"{role}/b{batch}/{fmt}"] = {
                    "rows_s": calls * batch,
                    "calls_s": calls,
                    "p50_ms": p50,
                    "p99_ms": p99,
                }
        plane.close()
    return results


def server_cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of a server process and its children (workers) so far."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def measure(
    url: str, body: Path | None, conc: int, seconds: int, batch: int, pid: int | None
) -> dict[str, Any]:
    """One load cell plus the server's CPU time per request (robust to other load on the machine)."""
    cpu_before = server_cpu_seconds(pid) if pid else 0.0
    result = load(url, body, conc, seconds)
    row = _row(result, batch)
    if pid and result.requests:
        row["cpu_us_per_req"] = (server_cpu_seconds(pid) - cpu_before) / result.requests * 1e6
    return row


def measure_server(
    url: str,
    models_cells: list[tuple[str, dict[str, Any], int, str, int]],
    seconds: int,
    pid: int | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for role, model, batch, fmt, conc in models_cells:
        out[f"{role}/b{batch}/{fmt}/c{conc}"] = measure(
            url + "/invocations", payload(model, batch, fmt), conc, seconds, batch, pid
        )
    return out


def goal_reps(
    url: str, model: dict[str, Any], seconds: int, reps: int, pid: int | None, runtime_pairs: int = 10
) -> dict[str, Any]:
    """Interleaved ping-floor / batch-1 cells, repeated, so machine noise hits both sides alike: each
    ratio compares two adjacent cells, taken in alternating order (the VM's speed drifts)."""
    pings, invokes, singles = [], [], []
    csv64: list[dict[str, Any]] = []
    recordio64: list[dict[str, Any]] = []
    body = payload(model, 1, "csv")
    for rep in range(reps):
        if rep % 2 == 0:
            pings.append(measure(url + "/ping", None, 8, seconds, 1, pid))
            invokes.append(measure(url + "/invocations", body, 8, seconds, 1, pid))
        else:
            invokes.append(measure(url + "/invocations", body, 8, seconds, 1, pid))
            pings.append(measure(url + "/ping", None, 8, seconds, 1, pid))
        singles.append(measure(url + "/invocations", body, 1, seconds, 1, pid))
        # batch-64 RecordIO-protobuf next to batch-64 CSV, in alternating order too
        pair = [(csv64, "csv"), (recordio64, "recordio")]
        for cells, fmt in pair if rep % 2 == 0 else pair[::-1]:
            cells.append(measure(url + "/invocations", payload(model, 64, fmt), 8, seconds, 64, pid))
    ratios = sorted(i["rps"] / p["rps"] for p, i in zip(pings, invokes, strict=True) if p["rps"])
    runtime = runtime_path(url, body, seconds, runtime_pairs, pid)
    recordio_ratios = sorted(r["rps"] / c["rps"] for c, r in zip(csv64, recordio64, strict=True) if c["rps"])
    return {
        "b64_csv_c8_rps": [c["rps"] for c in csv64],
        "b64_recordio_c8_rps": [r["rps"] for r in recordio64],
        "recordio_errors": sum(r["errors"] for r in recordio64),
        "ratio_recordio_over_csv": recordio_ratios,
        "ratio_recordio_median": recordio_ratios[len(recordio_ratios) // 2] if recordio_ratios else None,
        **runtime,
        "ping_c8_rps": [p["rps"] for p in pings],
        "b1_csv_c8_rps": [i["rps"] for i in invokes],
        "ratio_b1_c8_over_ping": ratios,
        "ratio_median": ratios[len(ratios) // 2] if ratios else None,
        "ping_cpu_us": [p.get("cpu_us_per_req") for p in pings],
        "b1_cpu_us": [i.get("cpu_us_per_req") for i in invokes],
        "c1_p50_ms": sorted(s["p50_ms"] for s in singles),
    }


def runtime_path(url: str, body: Path, seconds: int, pairs: int, pid: int | None) -> dict[str, Any]:
    """The runtime path the gateway forwards (``POST /endpoints/<name>/invocations``) against
    ``/invocations`` on the same server: ``pairs`` pairs of adjacent batch-1 CSV c8 cells in ABBA order
    (A B, B A, A B …), so a linear drift of the VM's speed cancels in the totals. The goal is judged on the
    ratio of the totals (requests served by each side in the same wall time); the per-pair ratios and the
    server's CPU per request show the spread."""
    runtime_url = f"{url}/endpoints/{BENCH_ENDPOINT}/invocations"
    invokes: list[dict[str, Any]] = []
    runtimes: list[dict[str, Any]] = []
    for pair in range(pairs):
        order = [(url + "/invocations", invokes), (runtime_url, runtimes)]
        for target, cells in order if pair % 2 == 0 else order[::-1]:
            cells.append(measure(target, body, 8, seconds, 1, pid))
    ratios = sorted(r["rps"] / i["rps"] for i, r in zip(invokes, runtimes, strict=True) if i["rps"])
    total_invocations = sum(i["rps"] for i in invokes)
    total_runtime = sum(r["rps"] for r in runtimes)
    cpu_inv = sorted(v for i in invokes if (v := i.get("cpu_us_per_req")))
    cpu_rt = sorted(v for r in runtimes if (v := r.get("cpu_us_per_req")))
    return {
        "runtime_b1_csv_c8_rps": [r["rps"] for r in runtimes],
        "runtime_pair_b1_csv_c8_rps": [i["rps"] for i in invokes],
        "runtime_cpu_us": [r.get("cpu_us_per_req") for r in runtimes],
        "runtime_pair_cpu_us": [i.get("cpu_us_per_req") for i in invokes],
        "runtime_errors": sum(r["errors"] for r in runtimes),
        "ratio_runtime_over_invocations": ratios,
        "ratio_runtime_median": ratios[len(ratios) // 2] if ratios else None,
        "ratio_runtime_totals": total_runtime / total_invocations if total_invocations else None,
        "ratio_runtime_cpu": (
            cpu_inv[len(cpu_inv) // 2] / cpu_rt[len(cpu_rt) // 2] if cpu_inv and cpu_rt else None
        ),
    }


def _row(result: LoadResult, batch: int) -> dict[str, Any]:
    return {
        "rps": result.rps,
        "rows_s": result.rps * batch,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "errors": result.errors,
        "tool": result.tool,
        "requests": result.requests,
    }


def run_ours(
    models: dict[str, dict[str, Any]],
    role: str,
    cells: list[tuple[int, str, int]],
    seconds: int,
    log_dir: Path,
    worker_class: str,
    reps: int = 0,
    runtime_pairs: int = 10,
) -> dict[str, Any]:
    port = free_port()
    env = {
        "SELFMAKER_SERVE_WORKER_CLASS": worker_class,
        "SELFMAKER_ACCESS_LOG": "false",
        "SELFMAKER_ENDPOINT_NAME": BENCH_ENDPOINT,
        "SELFMAKER_VARIANT_NAME": "AllTraffic",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    proc = start(
        f"selfmaker-{role}-{worker_class}",
        [
            sys.executable,
            "-m",
            "serving",
            "--model-dir",
            str(models[role]["dir"]),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        log_dir=log_dir,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url + "/ping", 120)
        pid = proc.popen.pid
        result = {"ping_c8": measure(url + "/ping", None, 8, seconds, 1, pid)}
        result.update(measure_server(url, [(role, models[role], b, f, c) for b, f, c in cells], seconds, pid))
        result["ping_c8_after"] = measure(url + "/ping", None, 8, seconds, 1, pid)
        if reps:
            result["goal_reps"] = goal_reps(url, models[role], seconds, reps, pid, runtime_pairs)
        return result
    finally:
        proc.stop()


def run_naive(
    models: dict[str, dict[str, Any]], cells: list[tuple[int, str, int]], seconds: int, log_dir: Path
) -> dict[str, Any]:
    port = free_port()
    proc = start(
        "naive-flask",
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-w",
            "2",
            "-b",
            f"127.0.0.1:{port}",
            "--no-control-socket",
            "naive_server:app",
        ],
        env={"MODEL_PATH": str(models["small"]["onnx"])},
        cwd=str(ANCHORS),
        log_dir=log_dir,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url + "/ping", 180)
        pid = proc.popen.pid
        result = {"ping_c8": measure(url + "/ping", None, 8, seconds, 1, pid)}
        result.update(
            measure_server(url, [("small", models["small"], b, f, c) for b, f, c in cells], seconds, pid)
        )
        return result
    finally:
        proc.stop()


def run_mms(
    models: dict[str, dict[str, Any]],
    cells: list[tuple[int, str, int]],
    seconds: int,
    log_dir: Path,
    mms_python: Path,
) -> dict[str, Any]:
    port = free_port(below=32768)
    base = Path(tempfile.mkdtemp(prefix="mms-", dir=log_dir))
    proc = start(
        "mms-toolkit",
        [
            str(mms_python),
            str(ANCHORS / "mms" / "serve.py"),
            str(base),
            str(models["small"]["onnx"]),
            str(port),
        ],
        cwd=str(base),
        log_dir=log_dir,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url + "/ping", 180)
        pid = proc.popen.pid
        result = {"ping_c8": measure(url + "/ping", None, 8, seconds, 1, pid)}
        result.update(
            measure_server(url, [("small", models["small"], b, f, c) for b, f, c in cells], seconds, pid)
        )
        return result
    finally:
        proc.stop()


def _fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def report(results: dict[str, Any], roles: list[str], concs: list[int]) -> list[str]:
    lines: list[str] = []
    ip = results["in_process"]
    lines.append("## In-process limit (DataPlane.invoke: decode + onnxruntime + encode, 1 thread)")
    lines.append("| model | batch | format | rows/s | p50 ms | p99 ms |")
    lines.append("|---|---|---|---|---|---|")
    for key, row in ip.items():
        role, batch, fmt = key.split("/")
        lines.append(
            f"| {role} | {batch[1:]} | {fmt} | {_fmt(row['rows_s'])} | {row['p50_ms']:.3f} | "
            f"{row['p99_ms']:.3f} |"
        )
    for label in [k for k in results if k.startswith("ours/")]:
        srv = results[label]
        floor = srv["ping_c8"]["rps"]
        lines.append("")
        lines.append(
            f"## {label}: HTTP floor GET /ping c8 = {_fmt(floor)} req/s (after the matrix: "
            f"{_fmt(srv['ping_c8_after']['rps'])})"
        )
        lines.append(
            "| model | batch | format | conc | req/s | rows/s | p50 ms | p99 ms | vs in-process rows/s "
            "| server CPU us/req | errors |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for key, row in srv.items():
            if key.startswith("ping") or key == "goal_reps":
                continue
            role, batch, fmt, conc = key.split("/")
            limit = ip.get(f"{role}/{batch}/{fmt}", {}).get("rows_s")
            ratio = f"{row['rows_s'] / limit:.2f}" if limit else "-"
            lines.append(
                f"| {role} | {batch[1:]} | {fmt} | {conc[1:]} | {_fmt(row['rps'])} | {_fmt(row['rows_s'])} | "
                f"{row['p50_ms']:.3f} | {row['p99_ms']:.3f} | {ratio} | "
                f"{_fmt(row.get('cpu_us_per_req', 0))} | {row['errors']} |"
            )
    for label in ("naive", "mms"):
        if label in results and isinstance(results[label], dict):
            srv = results[label]
            lines.append("")
            lines.append(f"## anchor {label}: GET /ping c8 = {_fmt(srv['ping_c8']['rps'])} req/s")
            lines.append("| batch | format | conc | req/s | p50 ms | p99 ms | server CPU us/req |")
            lines.append("|---|---|---|---|---|---|---|")
            for key, row in srv.items():
                if key.startswith("ping"):
                    continue
                _, batch, fmt, conc = key.split("/")
                lines.append(
                    f"| {batch[1:]} | {fmt} | {conc[1:]} | {_fmt(row['rps'])} | {row['p50_ms']:.3f} | "
                    f"{row['p99_ms']:.3f} | {_fmt(row.get('cpu_us_per_req', 0))} |"
                )
        elif label in results:
            lines.append("")
            lines.append(f"## anchor {label}: not measured ({results[label]})")
    for label in [k for k in results if k.startswith("ours/")]:
        ours = results[label]
        lines.append("")
        lines.append(f"## Goals ({label})")
        floor = ours["ping_c8"]["rps"]
        b1 = ours.get("small/b1/csv/c8")
        if b1:
            after = ours.get("ping_c8_after", {}).get("rps")
            also = f", {b1['rps'] / after:.2f} against the floor after the matrix" if after else ""
            lines.append(
                f"- batch 1 CSV @ c8 / own /ping floor: {b1['rps'] / floor:.2f}{also} (goal >= 0.85; the"
                " interleaved reps below compare adjacent cells)"
            )
            for anchor in ("mms", "naive"):
                other = results.get(anchor)
                if isinstance(other, dict) and "small/b1/csv/c8" in other:
                    goal = " (goal >= 1.5)" if anchor == "mms" else ""
                    lines.append(
                        f"- batch 1 CSV @ c8 / {anchor}: "
                        f"{b1['rps'] / other['small/b1/csv/c8']['rps']:.2f}{goal}"
                    )
        for role in roles:
            for fmt in FORMATS:
                best = max(
                    (ours[k]["rows_s"] for k in ours if k.startswith(f"{role}/b512/{fmt}/")), default=None
                )
                limit = ip.get(f"{role}/b512/{fmt}", {}).get("rows_s")
                if best and limit:
                    lines.append(
                        f"- {role} batch 512 {fmt}: best HTTP rows/s / in-process = {best / limit:.2f} "
                        "(goal >= 0.70)"
                    )
        c1 = ours.get("small/b1/csv/c1")
        if c1:
            lines.append(f"- p50 batch 1 CSV @ c1: {c1['p50_ms']:.3f} ms (goal <= 0.6 ms)")
        reps = ours.get("goal_reps")
        if reps:
            ratios = ", ".join(f"{r:.2f}" for r in reps["ratio_b1_c8_over_ping"])
            lines.append(
                f"- interleaved reps: batch 1 CSV c8 / ping c8 = [{ratios}] (median "
                f"{reps['ratio_median']:.2f});"
                f" c1 p50 ms = {[round(v, 3) for v in reps['c1_p50_ms']]}"
            )
            runtime = reps.get("ratio_runtime_over_invocations")
            if runtime:
                totals = reps.get("ratio_runtime_totals")
                cpu = reps.get("ratio_runtime_cpu")
                lines.append(
                    f"- runtime path POST /endpoints/{BENCH_ENDPOINT}/invocations / POST /invocations "
                    f"(batch 1 CSV c8, {len(runtime)} ABBA pairs): requests in equal time = "
                    f"{_fmt(totals, 3) if totals else '-'} (goal >= 0.98); per pair "
                    f"[{', '.join(f'{r:.3f}' for r in runtime)}] "
                    f"(median {reps['ratio_runtime_median']:.3f}); "
                    f"server CPU per request /invocations ÷ runtime path = {_fmt(cpu, 3) if cpu else '-'}; "
                    f"{reps['runtime_errors']} errors"
                )
            recordio_ratios = reps.get("ratio_recordio_over_csv")
            if recordio_ratios:
                lines.append(
                    "- batch 64 RecordIO-protobuf / batch 64 CSV (c8, adjacent cells) req/s = "
                    f"[{', '.join(f'{r:.3f}' for r in recordio_ratios)}] (median "
                    f"{reps['ratio_recordio_median']:.3f}; goal >= 0.8; {reps['recordio_errors']} errors)"
                )
            cpu_ping = [round(v) for v in reps["ping_cpu_us"] if v]
            cpu_b1 = [round(v) for v in reps["b1_cpu_us"] if v]
            cpu_runtime = [round(v) for v in reps.get("runtime_cpu_us", []) if v]
            also = f", runtime path {cpu_runtime} us" if cpu_runtime else ""
            lines.append(f"- server CPU per request: /ping {cpu_ping} us, batch 1 CSV {cpu_b1} us{also}")
        for anchor in ("mms", "naive"):
            other = results.get(anchor)
            if not isinstance(other, dict):
                continue
            for key in ("small/b1/csv/c8", "small/b64/csv/c8", "small/b512/csv/c8"):
                if key in other and key in ours:
                    theirs_cpu = other[key].get("cpu_us_per_req") or 0
                    cpu = (
                        f" (server CPU/req {ours[key].get('cpu_us_per_req', 0):.0f} vs {theirs_cpu:.0f} us)"
                        if theirs_cpu
                        else ""
                    )
                    lines.append(f"- {key} ours / {anchor}: {ours[key]['rps'] / other[key]['rps']:.2f}{cpu}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.serving",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=int, default=2, help="seconds per HTTP cell (default 2)")
    parser.add_argument("--inproc-seconds", type=float, default=0.7, help="seconds per in-process cell")
    parser.add_argument("--full", action="store_true", help="the whole matrix for the medium model too")
    parser.add_argument("--medium", choices=("gbt", "mlp"), default="gbt")
    parser.add_argument(
        "--worker-classes",
        default="inline",
        help="comma list of gunicorn worker classes to measure (default: the server's default, inline)",
    )
    parser.add_argument(
        "--anchors", default="naive,mms", help="comma list of anchors to measure (naive, mms, or none)"
    )
    parser.add_argument(
        "--mms-venv",
        default=os.environ.get("SELFMAKER_MMS_VENV") or str(ROOT / ".bench" / "mms-venv"),
        help="venv with the anchors' requirements.txt installed (multi-model-server); default "
        "<repository>/.bench/mms-venv (gitignored), or SELFMAKER_MMS_VENV",
    )
    parser.add_argument(
        "--reps", type=int, default=5, help="interleaved repetitions of the goal cells (median reported)"
    )
    parser.add_argument(
        "--runtime-pairs",
        type=int,
        default=10,
        help="ABBA pairs of /invocations and runtime-path cells (the runtime path's goal; default 10)",
    )
    parser.add_argument("--setup-mms", action="store_true", help="create the MMS venv (pip) if it is missing")
    parser.add_argument("--work", default=None, help="directory for models and logs (default: a temp dir)")
    parser.add_argument("--out", default=None, help="write the raw results as JSON here")
    parser.add_argument(
        "--report", default=None, help="only print the tables of a results JSON written by --out"
    )
    args = parser.parse_args(argv)
    if args.report:
        print("\n".join(report(json.loads(Path(args.report).read_text()), ["small", "medium"], [1, 8, 32])))
        return 0

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-serving-"))
    work.mkdir(parents=True, exist_ok=True)
    log_dir = work / "logs"
    log_dir.mkdir(exist_ok=True)
    models = build_models(work / "art", args.medium)
    write_recordio_payloads(models["small"])
    concs = [1, 8, 32]
    roles = ["small", "medium"]
    small_cells = [(b, f, c) for b in BATCHES for f in FORMATS for c in concs] + RECORDIO_CELLS
    medium_cells = small_cells if args.full else [(b, f, 8) for b in BATCHES for f in FORMATS]

    results: dict[str, Any] = {"seconds": args.seconds, "work": str(work)}
    print(f"# bench.serving (work dir {work}, {args.seconds}s per HTTP cell)", flush=True)
    results["in_process"] = in_process(models, args.inproc_seconds, roles)
    for worker_class in [w for w in args.worker_classes.split(",") if w]:
        ours = run_ours(
            models, "small", small_cells, args.seconds, log_dir, worker_class, args.reps, args.runtime_pairs
        )
        medium = run_ours(models, "medium", medium_cells, args.seconds, log_dir, worker_class)
        ours.update({k: v for k, v in medium.items() if not k.startswith("ping")})
        results[f"ours/{worker_class}"] = ours
    anchor_cells = [(1, "csv", 8), (64, "csv", 8), (1, "csv", 1), (512, "csv", 8)]
    anchors = [a for a in args.anchors.split(",") if a and a != "none"]
    if "naive" in anchors:
        try:
            results["naive"] = run_naive(models, anchor_cells, args.seconds, log_dir)
        except Exception as exc:  # an anchor failing must not lose our own figures
            results["naive"] = f"failed: {exc}"
    if "mms" in anchors:
        mms_python = Path(args.mms_venv) / "bin" / "python"
        if args.setup_mms and not mms_python.exists():
            subprocess.run([sys.executable, "-m", "venv", args.mms_venv], check=True, timeout=300)
            subprocess.run(
                [str(mms_python), "-m", "pip", "install", "-q", "-r", str(ANCHORS / "requirements.txt")],
                check=False,
                timeout=1800,
            )
        if not mms_python.exists():
            results["mms"] = (
                f"no MMS venv at {args.mms_venv} (python3 -m venv it and pip install -r "
                f"{ANCHORS}/requirements.txt)"
            )
        else:
            try:
                results["mms"] = run_mms(models, anchor_cells, args.seconds, log_dir, mms_python)
            except Exception as exc:
                results["mms"] = f"failed: {str(exc)[:300]}"
    print("\n".join(report(results, roles, concs)))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
