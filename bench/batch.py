"""Batch transform throughput and memory: ``python -m bench.batch``.

Generates an N-row x 20-feature CSV (default 1M rows), then for a small model (logistic regression, 20
features) and a medium one (MLP 256-256) measures, in the same run:

* the **in-process limit**: a plain loop per core (multiprocessing, no Dask, no HTTP) that reads its
  byte range in 6 MB mini-batches, parses with the model server's CSV parser, runs onnxruntime (one
  thread), formats with the server's CSV encoder and writes its output file;
* the **transform** through ``batch.engine.run_transform`` on a LocalCluster (one worker per core, started
  once, outside the timing) with the model in process (``inprocess``) and in model servers (``http``);

and prints rows/s and the ratio to the limit (goal >= 0.70). Then it runs the small model on a 4x larger
file and compares the peak memory (RSS summed over the driver, the Dask workers and the model servers)
with the 1x run: bounded memory means the two are about equal.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

FEATURES = 20
PAYLOAD = 6 * 1024 * 1024


# -- data and models ------------------------------------------------------------------------------------


def make_data(path: Path, rows: int, seed: int = 0) -> Path:
    """``rows`` lines of 20 comma-separated float32 values (4 decimals), written in chunks."""
    from serving.codecs import encode_csv

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        left = rows
        while left:
            n = min(left, 200_000)
            out.write(encode_csv(np.round(rng.normal(size=(n, FEATURES)), 4).astype(np.float32)))
            left -= n
    return path


def make_models(base: Path) -> dict[str, Path]:
    """``small``: logistic regression; ``medium``: MLP 256-256; both ONNX with a signature (xgboost
    format)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(1)
    X = rng.normal(size=(3000, FEATURES)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(np.int64)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        models = {
            "small": LogisticRegression().fit(X, y),
            "medium": MLPClassifier(hidden_layer_sizes=(256, 256), max_iter=5, random_state=0).fit(X, y),
        }
    dirs = {}
    for name, model in models.items():
        onx = convert_sklearn(
            model,
            initial_types=[("input", FloatTensorType([None, FEATURES]))],
            options={id(model): {"zipmap": False}},
            target_opset=17,
        )
        d = base / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "model.onnx").write_bytes(onx.SerializeToString())
        (d / "signature.json").write_text(
            json.dumps(
                {
                    "format": 1,
                    "framework": "sklearn",
                    "task": "binary_classification",
                    "classes": [0, 1],
                    "inputs": [{"name": "input", "dtype": "float32", "shape": [None, FEATURES]}],
                    "response_format": "xgboost",
                }
            )
        )
        dirs[name] = d
    return dirs


# -- the in-process limit -----------------------------------------------------------------------------------


def _limit_worker(args: tuple[str, str, int, int | None, str]) -> int:
    import onnxruntime as ort

    from batch.records import LineRange
    from serving.codecs import decode_csv, encode_csv

    model_dir, data, start, end, out = args
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(Path(model_dir) / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    rows = 0
    with open(data, "rb") as f, open(out, "wb") as sink:
        f.seek(max(0, start - 1))
        for _, block in LineRange(f, source=data, start=start, end=end, max_record=PAYLOAD).blocks(PAYLOAD):
            x = decode_csv(block)
            probs = session.run(["probabilities"], {name: x})[0]
            sink.write(encode_csv(probs[:, 1]))
            rows += x.shape[0]
    return rows


def run_limit(model_dir: Path, data: Path, out_dir: Path, procs: int) -> tuple[float, int]:
    """Seconds and rows of the plain loop, one process per core, each on its byte range."""
    size = data.stat().st_size
    step = -(-size // procs)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [
        (
            str(model_dir),
            str(data),
            i * step,
            (i + 1) * step if i < procs - 1 else None,
            str(out_dir / f"{i}.out"),
        )
        for i in range(procs)
    ]
    from concurrent.futures import ProcessPoolExecutor

    # a ProcessPoolExecutor fails (BrokenProcessPool) instead of hanging if a process dies
    with ProcessPoolExecutor(procs, mp_context=mp.get_context("spawn")) as pool:
        list(pool.map(abs, range(procs * 4)))  # start the processes outside the timing
        started = time.perf_counter()
        rows = sum(pool.map(_limit_worker, jobs, timeout=1800))
        return time.perf_counter() - started, rows


# -- the transform ------------------------------------------------------------------------------------------


class MemorySampler:
    """Peak of the RSS summed over this process and all its descendants, sampled every 200 ms."""

    def __init__(self) -> None:
        import psutil

        self._me = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        import psutil

        total = 0
        for proc in [self._me, *self._me.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                continue
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self._sample())

    def __enter__(self) -> MemorySampler:
        self.peak = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def run_job(client: Any, model_dir: Path, data: Path, out: Path, mode: str) -> tuple[float, Any, int]:
    """Seconds, result and peak memory (bytes) of one transform job on ``client``'s cluster."""
    from batch.engine import run_transform
    from batch.settings import BatchSettings

    shutil.rmtree(out, ignore_errors=True)
    request = {
        "TransformJobName": f"bench-{mode}",
        "ModelName": "bench",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": data.as_uri()}},
            "ContentType": "text/csv",
            "SplitType": "Line",
        },
        "TransformOutput": {"S3OutputPath": out.as_uri(), "Accept": "text/csv", "AssembleWith": "Line"},
        "TransformResources": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1},
        "BatchStrategy": "MultiRecord",
        "MaxPayloadInMB": 6,
    }
    with MemorySampler() as memory:
        started = time.perf_counter()
        result = run_transform(
            request, model_dir=str(model_dir), client=client, settings=BatchSettings(mode=mode)
        )
        seconds = time.perf_counter() - started
    if result.status != "Completed":
        raise SystemExit(f"transform failed: {result.failure_reason}")
    return seconds, result, memory.peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.batch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the main file (default 1M)")
    parser.add_argument(
        "--large-factor", type=int, default=4, help="the memory run uses rows x this (default 4; 0 = skip)"
    )
    parser.add_argument("--models", default="small,medium")
    parser.add_argument("--modes", default="inprocess,http")
    parser.add_argument(
        "--workers", type=int, default=None, help="Dask workers / limit processes (default: cores)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="rounds; the best of each measurement is shown (the machine may be shared)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args(argv)

    import logging

    from distributed import Client, LocalCluster

    from batch.settings import machine_cores

    logging.getLogger("distributed").setLevel(logging.WARNING)
    procs = args.workers or machine_cores()
    work = Path(tempfile.mkdtemp(prefix="selfmaker-bench-batch-"))
    try:
        t = time.perf_counter()
        print("generating data and models...", flush=True)
        data = make_data(work / "in" / "data.csv", args.rows)
        print(
            f"data: {args.rows:,} rows x {FEATURES} features, {data.stat().st_size / 2**20:.0f} MB "
            f"(generated in {time.perf_counter() - t:.1f} s); {procs} cores"
        )
        models = make_models(work / "models")
        t = time.perf_counter()
        cluster = LocalCluster(
            n_workers=procs, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0"
        )
        client = Client(cluster)
        print(
            f"LocalCluster with {procs} workers started in {time.perf_counter() - t:.1f} s (not in the "
            "timings)"
        )
        rows_out: list[dict[str, Any]] = []
        peaks: dict[int, int] = {}
        try:
            best: dict[tuple[str, str], dict[str, Any]] = {}
            for round_ in range(args.repeat):
                for name in args.models.split(","):
                    print(f"[{round_ + 1}/{args.repeat}] {name}: in-process limit...", flush=True)
                    seconds, rows = run_limit(models[name], data, work / "limit", procs)
                    assert rows == args.rows, (rows, args.rows)
                    key = (name, "in-process limit")
                    if key not in best or args.rows / seconds > best[key]["rows/s"]:
                        best[key] = {"model": name, "path": "in-process limit", "rows/s": args.rows / seconds}
                    for mode in args.modes.split(","):
                        print(f"[{round_ + 1}/{args.repeat}] {name}: transform ({mode})...", flush=True)
                        seconds, result, peak = run_job(
                            client, models[name], data.parent, work / f"out-{mode}", mode
                        )
                        assert result.records == args.rows
                        key = (name, f"transform ({mode})")
                        rate = args.rows / seconds
                        steady = args.rows / max(
                            1e-9, seconds - result.startup_seconds - result.teardown_seconds
                        )
                        if key not in best or rate > best[key]["rows/s"]:
                            best[key] = {
                                "model": name,
                                "path": key[1],
                                "rows/s": rate,
                                "peak": peak,
                                "steady": steady,
                                "setup": result.startup_seconds + result.teardown_seconds,
                            }
                        if name == "small" and mode == "inprocess":
                            peaks[args.rows] = max(peaks.get(args.rows, 0), peak)
            for (name, _path), entry in best.items():
                limit_rate = best[(name, "in-process limit")]["rows/s"]
                entry["ratio"] = entry["rows/s"] / limit_rate
                if "steady" in entry:
                    entry["steady_ratio"] = entry["steady"] / limit_rate
                rows_out.append(entry)
            print(
                f"\n{'model':8} {'path':24} {'rows/s':>9} {'vs limit':>9} {'steady rows/s':>14} "
                f"{'vs limit':>9} {'start+stop':>11} {'peak RSS':>9}"
            )
            for r in rows_out:
                peak = f"{r['peak'] / 2**20:,.0f} MB" if "peak" in r else ""
                steady = f"{r['steady']:>14,.0f} {r['steady_ratio']:>8.0%}" if "steady" in r else " " * 24
                setup = f"{r['setup']:.1f} s" if "setup" in r else ""
                print(
                    f"{r['model']:8} {r['path']:24} {r['rows/s']:>9,.0f} {r['ratio']:>8.0%} {steady} "
                    f"{setup:>11} {peak:>9}"
                )
            print(
                "steady = rows / (job time - model start-up on the workers - stopping them); the limit's "
                f"processes are started outside its timing too; best of {args.repeat} round(s)"
            )
            if args.large_factor and "small" in args.models.split(","):
                big_rows = args.rows * args.large_factor
                shutil.rmtree(work / "limit", ignore_errors=True)
                shutil.rmtree(work / "out-inprocess", ignore_errors=True)
                shutil.rmtree(work / "out-http", ignore_errors=True)
                big = make_data(work / "big" / "data.csv", big_rows, seed=5)
                seconds, result, peak = run_job(
                    client, models["small"], big.parent, work / "out-big", "inprocess"
                )
                peaks[big_rows] = peak
                print("\nmemory (small model, in process; RSS of driver + workers + servers):")
                for n, peak in sorted(peaks.items()):
                    print(f"  {n:>10,} rows: peak {peak / 2**20:,.0f} MB")
                ratio = peaks[big_rows] / peaks[args.rows]
                print(
                    f"  {args.large_factor}x the rows -> {ratio:.2f}x the peak memory "
                    f"({big_rows / seconds:,.0f} rows/s on the large file)"
                )
        finally:
            client.close()
            cluster.close()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"files kept in {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
