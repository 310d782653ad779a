"""A transform split over AWS Batch array children vs the local engine: ``python -m bench.aws_batch``.

Both run on this machine against the same S3 (moto's server on 127.0.0.1), end to end as a user runs them:

* the **local engine** (the baseline): ``selfmaker transform REQUEST.json --model-data s3://…`` in a fresh
  process with one Dask worker per core;
* **2 children** (default; ``--children``): the submitter's plan (``batch.awsbatch.prepare``: the engine's
  plan cut into shares) and then the children as AWS Batch would start them — ``selfmaker transform-share``
  processes with ``AWS_BATCH_JOB_ARRAY_INDEX`` — each with its share of this machine's cores.

The runs alternate (local, children, local, …) ``--repeat`` times; the figure is the median of the ratios of
each pair (children rows/s / local rows/s; goal >= 0.90), with both rates listed. Every output is
checked to be
byte for byte the local one.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _env(endpoint: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    env.update(extra)
    return env


def _request(name: str, output: str) -> dict[str, Any]:
    return {
        "TransformJobName": name,
        "ModelName": "bench",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://bench-in/data/"}},
            "ContentType": "text/csv",
            "SplitType": "Line",
        },
        "TransformOutput": {"S3OutputPath": output, "Accept": "text/csv", "AssembleWith": "Line"},
        "TransformResources": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 2},
        "BatchStrategy": "MultiRecord",
        "MaxPayloadInMB": 6,
    }


def _outputs(s3: Any, prefix: str) -> dict[str, bytes]:
    found = s3.list_objects_v2(Bucket="bench-out", Prefix=prefix).get("Contents", [])
    return {
        o["Key"][len(prefix) :]: s3.get_object(Bucket="bench-out", Key=o["Key"])["Body"].read() for o in found
    }


def run_local(endpoint: str, work: Path, model: str, cores: int, tag: str) -> float:
    """Seconds of one local ``selfmaker transform`` (a fresh process, its own LocalCluster)."""
    req = work / f"{tag}.json"
    req.write_text(json.dumps(_request(tag, f"s3://bench-out/{tag}/")))
    started = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "selfmaker",
            "transform",
            str(req),
            "--model-data",
            model,
            "--workers",
            str(cores),
            "--quiet",
            "--state-dir",
            str(work / f"state-{tag}"),
        ],
        env=_env(endpoint, SELFMAKER_HOME=str(work / "home")),
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"local transform failed:\n{proc.stdout}\n{proc.stderr}")
    return seconds


def run_children(endpoint: str, work: Path, model: str, cores: int, children: int, tag: str) -> float:
    """Seconds of planning the shares plus ``children`` ``transform-share`` processes run side by side."""
    from batch import storage
    from batch.awsbatch import prepare

    storage.configure_s3(endpoint)
    started = time.perf_counter()
    state = f"s3://bench-out/selfmaker-jobs/transform/{tag}/"
    prepared = prepare(
        _request(tag, f"s3://bench-out/{tag}/"),
        model=model,
        model_environment={},
        state=state,
        children=children,
        part_bytes=32 * 2**20,
        cores_per_child=max(1, cores // children),
    )
    per_child = str(max(1, cores // len(prepared.shares)))
    procs = []
    for index in range(len(prepared.shares)):
        log = (work / f"{tag}-{index}.log").open("wb")
        procs.append(
            (
                subprocess.Popen(
                    [sys.executable, "-m", "selfmaker", "transform-share", "--state", state],
                    env=_env(
                        endpoint, AWS_BATCH_JOB_ARRAY_INDEX=str(index), SELFMAKER_BATCH_WORKERS=per_child
                    ),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
                log,
            )
        )
    try:
        codes = [p.wait(timeout=3600) for p, _ in procs]
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            log.close()
    seconds = time.perf_counter() - started
    if codes != [0] * len(procs):
        raise SystemExit(f"a child failed ({codes}); logs in {work}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.aws_batch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="rows of input (default 1M, in 4 objects)"
    )
    parser.add_argument("--children", type=int, default=2, help="array children (default 2)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="pairs of runs (default 3; the median ratio is shown)"
    )
    args = parser.parse_args(argv)

    import boto3
    from moto.server import ThreadedMotoServer

    from batch.settings import machine_cores
    from bench.batch import make_data, make_models

    cores = machine_cores()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update(
        {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    )
    work = Path(tempfile.mkdtemp(prefix="selfmaker-bench-aws-batch-"))
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket="bench-in")
        s3.create_bucket(Bucket="bench-out")
        per_object = args.rows // 4
        for i in range(4):
            path = make_data(work / f"part-{i}.csv", per_object, seed=i)
            s3.upload_file(str(path), "bench-in", f"data/part-{i}.csv")
            path.unlink()
        model_dir = make_models(work / "models")["small"]
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for p in sorted(model_dir.iterdir()):
                tar.add(p, arcname=p.name)
        s3.put_object(Bucket="bench-in", Key="model/model.tar.gz", Body=buf.getvalue())
        model = "s3://bench-in/model/model.tar.gz"
        rows = per_object * 4
        print(
            f"{rows:,} rows x 20 features in 4 objects on moto S3; {cores} cores; {args.children} children "
            f"x {max(1, cores // args.children)} workers vs the local engine x {cores} workers",
            flush=True,
        )
        pairs = []
        for rep in range(args.repeat):
            local_s = run_local(endpoint, work, model, cores, f"local-{rep}")
            batch_s = run_children(endpoint, work, model, cores, args.children, f"batch-{rep}")
            reference = _outputs(s3, f"local-{rep}/")
            if _outputs(s3, f"batch-{rep}/") != reference or len(reference) != 4:
                raise SystemExit("the children's outputs differ from the local engine's")
            pairs.append((rows / local_s, rows / batch_s))
            print(
                f"[{rep + 1}/{args.repeat}] local {rows / local_s:,.0f} rows/s ({local_s:.1f} s)  "
                f"children {rows / batch_s:,.0f} rows/s ({batch_s:.1f} s)  ratio {local_s / batch_s:.2f}",
                flush=True,
            )
        ratio = statistics.median(b / a for a, b in pairs)
        print(f"\nmedian ratio children / local engine: {ratio:.2f} (goal >= 0.90); outputs identical")
    finally:
        server.stop()
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
