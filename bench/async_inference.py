"""Async inference vs real-time on the same model, and backlog drain rate with 1 and 2 instances.

One run starts a moto server (S3 + SNS + SQS, its own process), a ``selfmaker up`` pointed at it, and three
endpoints serving the same tiny logistic-regression model (batch-1 CSV rows):

* ``rt``      real-time, 1 instance — the baseline;
* ``async1``  AsyncInferenceConfig, 1 instance, MaxConcurrentInvocationsPerInstance 4;
* ``async2``  the same with 2 instances.

Measured (all bounded in count and time):

1. latency: sequential batch-1 requests — real-time round trip vs async accept-to-output (InvokeEndpointAsync
   → output object exists in S3, polled with HEAD every 2 ms);
2. throughput with 4 client threads — real-time calls/s vs async completed requests/s (completion = the SNS
   notification arriving on a subscribed SQS queue, drained in the background);
3. drain rate of a backlog of N requests with 1 and 2 instances.

Prints a table and the ratios (async / real-time, 2 instances / 1 instance). The async path does S3 GET +
PUT + SNS publish per request against moto, which runs on the same 2 cores: read the ratios as the cost of
durability on this box, not as AWS numbers.

    .venv/bin/python bench/async_inference.py [--requests 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import build_classifier_tar, free_port, start, wait_ready  # noqa: E402

FEATURES = 20
ROW = (",".join(["0.25"] * FEATURES) + "\n").encode()
MAX_SECONDS = 300.0


def client(service: str, url: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"mode": "standard", "max_attempts": 2}, max_pool_connections=16),
    )


class Inbox:
    """Counts notifications per endpoint as they arrive on the SQS queue subscribed to the topic."""

    def __init__(self, sqs: Any, queue_url: str) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.done: dict[str, float] = {}  # inferenceId -> arrival time
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msgs = self.sqs.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            ).get("Messages", [])
            now = time.perf_counter()
            for m in msgs:
                note = json.loads(json.loads(m["Body"])["Message"])
                self.done.setdefault(note["inferenceId"], now)
            if msgs:
                self.sqs.delete_message_batch(
                    QueueUrl=self.queue_url,
                    Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)],
                )

    def wait(self, ids: list[str], timeout: float) -> float:
        """Perf-counter time at which the last of ``ids`` was notified."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(i in self.done for i in ids):
                return max(self.done[i] for i in ids)
            time.sleep(0.01)
        missing = sum(1 for i in ids if i not in self.done)
        raise RuntimeError(f"{missing} of {len(ids)} notifications missing after {timeout}s")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--requests", type=int, default=200, help="requests per throughput/drain measurement (≤2000)"
    )
    parser.add_argument(
        "--latency-requests", type=int, default=50, help="sequential requests for latency (≤500)"
    )
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)
    n = max(10, min(args.requests, 2000))
    n_lat = max(5, min(args.latency_requests, 500))

    work = Path(tempfile.mkdtemp(prefix="bench-async-"))
    moto_port, sm_port = free_port(), free_port()
    moto_url, sm_url = f"http://127.0.0.1:{moto_port}", f"http://127.0.0.1:{sm_port}"
    aws_env = {
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    procs = []
    try:
        moto = start(
            "moto",
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)],
            log_dir=work,
        )
        procs.append(moto)
        wait_ready(moto, f"{moto_url}/moto-api/", 60)
        platform = start(
            "selfmaker",
            [sys.executable, "-m", "selfmaker", "up", "--home", str(work / "home"), "--port", str(sm_port)],
            env={**aws_env, "SELFMAKER_ASYNC_SCALE_IN_AFTER": "3600"},
            cwd=str(ROOT),
            log_dir=work,
        )
        procs.append(platform)
        wait_ready(platform, f"{sm_url}/ping", 60)

        s3, sns, sqs = client("s3", moto_url), client("sns", moto_url), client("sqs", moto_url)
        sm, smr = client("sagemaker", sm_url), client("sagemaker-runtime", sm_url)
        s3.create_bucket(Bucket="bench")
        topic = sns.create_topic(Name="bench-done")["TopicArn"]
        inbox_url = sqs.create_queue(QueueName="bench-inbox")["QueueUrl"]
        inbox_arn = sqs.get_queue_attributes(QueueUrl=inbox_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=inbox_arn)
        s3.put_object(Bucket="bench", Key="in/row.csv", Body=ROW)
        source = "s3://bench/in/row.csv"

        model_tar = build_classifier_tar(work, FEATURES)
        sm.create_model(
            ModelName="bench-model",
            PrimaryContainer={"Image": "selfmaker", "ModelDataUrl": model_tar.as_uri()},
            ExecutionRoleArn="arn:aws:iam::123456789012:role/bench",
        )
        async_cfg = {
            "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 4},
            "OutputConfig": {
                "S3OutputPath": "s3://bench/out",
                "NotificationConfig": {"SuccessTopic": topic, "ErrorTopic": topic},
            },
        }
        for name, count, is_async in (("rt", 1, False), ("async1", 1, True), ("async2", 2, True)):
            variant = {
                "VariantName": "AllTraffic",
                "ModelName": "bench-model",
                "InstanceType": "ml.m5.large",
                "InitialInstanceCount": count,
            }
            extra = {"AsyncInferenceConfig": async_cfg} if is_async else {}
            sm.create_endpoint_config(EndpointConfigName=f"{name}-cfg", ProductionVariants=[variant], **extra)
            sm.create_endpoint(EndpointName=name, EndpointConfigName=f"{name}-cfg")
        for name in ("rt", "async1", "async2"):
            sm.get_waiter("endpoint_in_service").wait(
                EndpointName=name, WaiterConfig={"Delay": 0.5, "MaxAttempts": 240}
            )
        inbox = Inbox(client("sqs", moto_url), inbox_url)
        results: dict[str, Any] = {"requests": n, "latency_requests": n_lat}

        # 1. sequential latency
        for _ in range(5):
            smr.invoke_endpoint(EndpointName="rt", Body=ROW, ContentType="text/csv")
        rt_lat = []
        for _ in range(n_lat):
            t0 = time.perf_counter()
            smr.invoke_endpoint(EndpointName="rt", Body=ROW, ContentType="text/csv")["Body"].read()
            rt_lat.append(time.perf_counter() - t0)
        async_lat = []
        # warm-up: the worker process of a fresh instance starts a moment after the endpoint is InService
        warm = [f"warm-{i}" for i in range(3)]
        for i in warm:
            smr.invoke_endpoint_async(
                EndpointName="async1", InputLocation=source, ContentType="text/csv", InferenceId=i
            )
        inbox.wait(warm, 60)
        for i in range(n_lat):
            t0 = time.perf_counter()
            resp = smr.invoke_endpoint_async(
                EndpointName="async1", InputLocation=source, ContentType="text/csv", InferenceId=f"lat-{i}"
            )
            key = resp["OutputLocation"].split("/", 3)[3]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    s3.head_object(Bucket="bench", Key=key)
                    break
                except s3.exceptions.ClientError:
                    time.sleep(0.002)
            else:
                raise RuntimeError(f"no output for lat-{i}")
            async_lat.append(time.perf_counter() - t0)
        results["latency_ms"] = {
            "realtime_p50": statistics.median(rt_lat) * 1000,
            "realtime_p99": pct(rt_lat, 0.99),
            "async_accept_to_output_p50": statistics.median(async_lat) * 1000,
            "async_accept_to_output_p99": pct(async_lat, 0.99),
        }

        # 2. throughput with 4 client threads
        with ThreadPoolExecutor(4) as pool:
            t0 = time.perf_counter()
            list(
                pool.map(
                    lambda _: smr.invoke_endpoint(EndpointName="rt", Body=ROW, ContentType="text/csv")[
                        "Body"
                    ].read(),
                    range(n),
                )
            )
            rt_rps = n / (time.perf_counter() - t0)

        def drain(endpoint: str, tag: str) -> dict[str, float]:
            ids = [f"{tag}-{i}" for i in range(n)]
            t0 = time.perf_counter()
            with ThreadPoolExecutor(4) as pool:
                list(
                    pool.map(
                        lambda i: smr.invoke_endpoint_async(
                            EndpointName=endpoint, InputLocation=source, ContentType="text/csv", InferenceId=i
                        ),
                        ids,
                    )
                )
            accepted = time.perf_counter()
            last = inbox.wait(ids, MAX_SECONDS)
            return {"accept_rps": n / (accepted - t0), "completed_rps": n / (last - t0), "seconds": last - t0}

        # the storage floor: what one async request costs moto alone (GET input, PUT output, SNS publish),
        # with the same 4-way concurrency — no queue, no model, no worker
        body = json.dumps({"k": "v"})

        def storage_only(i: int) -> None:
            s3.get_object(Bucket="bench", Key="in/row.csv")["Body"].read()
            s3.put_object(Bucket="bench", Key=f"floor/{i}.out", Body=ROW)
            sns.publish(TopicArn=floor_topic, Message=body)

        floor_topic = sns.create_topic(Name="bench-floor")["TopicArn"]
        with ThreadPoolExecutor(4) as pool:
            t0 = time.perf_counter()
            list(pool.map(storage_only, range(n)))
            floor_rps = n / (time.perf_counter() - t0)

        results["throughput_rps"] = {"realtime_4_clients": rt_rps, "storage_floor_4_clients": floor_rps}
        one = drain("async1", "tp1")
        results["throughput_rps"]["async_4_clients"] = one["completed_rps"]
        results["throughput_rps"]["async_accept"] = one["accept_rps"]
        two = drain("async2", "tp2")
        results["drain_rps"] = {"instances_1": one["completed_rps"], "instances_2": two["completed_rps"]}
        results["ratios"] = {
            "async_p50_latency_over_realtime": results["latency_ms"]["async_accept_to_output_p50"]
            / results["latency_ms"]["realtime_p50"],
            "async_throughput_over_realtime": one["completed_rps"] / rt_rps,
            "async_throughput_over_storage_floor": one["completed_rps"] / floor_rps,
            "drain_2_instances_over_1": two["completed_rps"] / one["completed_rps"],
        }
        inbox.close()
        lat, tp, dr, ra = (
            results["latency_ms"],
            results["throughput_rps"],
            results["drain_rps"],
            results["ratios"],
        )
        print(
            f"async inference vs real-time, batch-1 CSV, {n} requests per throughput run "
            f"({os.cpu_count()} cores)"
        )
        print(
            f"  latency p50/p99 ms   real-time {lat['realtime_p50']:.1f}/{lat['realtime_p99']:.1f}   "
            f"async accept-to-output {lat['async_accept_to_output_p50']:.1f}/"
            f"{lat['async_accept_to_output_p99']:.1f}"
            f"   ratio {ra['async_p50_latency_over_realtime']:.1f}x"
        )
        print(
            f"  throughput req/s     real-time {tp['realtime_4_clients']:.1f}   async completed "
            f"{tp['async_4_clients']:.1f} (accepted {tp['async_accept']:.1f})   "
            f"ratio {ra['async_throughput_over_realtime']:.2f}"
        )
        print(
            f"  storage floor req/s  moto GET+PUT+publish {tp['storage_floor_4_clients']:.1f}   "
            f"async / floor {ra['async_throughput_over_storage_floor']:.2f}"
        )
        print(
            f"  backlog drain req/s  1 instance {dr['instances_1']:.1f}   "
            f"2 instances {dr['instances_2']:.1f}   "
            f"ratio {ra['drain_2_instances_over_1']:.2f}"
        )
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return 0
    finally:
        for proc in reversed(procs):
            proc.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    raise SystemExit(main())
