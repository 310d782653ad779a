"""selfmaker quickstart: plain boto3 code written for SageMaker, run against a local `selfmaker up`.

1. start `selfmaker up` on a free port of 127.0.0.1 with a temporary home;
2. generate a CSV dataset under file://, train it with the built-in XGBoost algorithm (CreateTrainingJob);
3. CreateModel from the trained model.tar.gz, an endpoint with two production variants weighted 80/20;
4. invoke a few hundred times and print the traffic split and latencies;
5. shift the weights live (UpdateEndpointWeightsAndCapacities), invoke with TargetVariant;
6. clean up (endpoint, config, model) and stop the platform.

Run: ``make demo`` (or ``.venv/bin/python examples/quickstart.py``). Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import boto3
import numpy as np

from common.proc import free_port

ROOT = Path(__file__).resolve().parent.parent
XGBOOST_IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1"
ROLE = "arn:aws:iam::123456789012:role/selfmaker-demo"


def start_platform(home: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`selfmaker up` on a free port; returns once GET /ping answers 200."""
    port = free_port()
    log = open(home / "selfmaker-up.log", "wb")  # noqa: SIM115 - closed with the process below
    proc = subprocess.Popen(
        [sys.executable, "-m", "selfmaker", "up", "--home", str(home), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=str(ROOT),
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"selfmaker up exited; see {home / 'selfmaker-up.log'}")
        try:
            with urllib.request.urlopen(url + "/ping", timeout=2) as resp:
                if resp.status == 200:
                    return proc, url
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("selfmaker up did not become ready in 60 s")
        time.sleep(0.1)


def stop_platform(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (model servers are stopped gracefully), SIGKILL after 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def make_dataset(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """A binary problem as headerless CSV, label first (the built-in XGBoost's format)."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2000, 6))
    y = (x @ np.array([1.5, -1.0, 0.5, 0.0, 0.8, -0.3]) + rng.normal(scale=0.3, size=2000) > 0).astype(int)
    for channel, rows in (("train", slice(0, 1600)), ("validation", slice(1600, 2000))):
        (root / channel).mkdir(parents=True)
        np.savetxt(
            root / channel / "data.csv", np.column_stack([y[rows], x[rows]]), delimiter=",", fmt="%.5f"
        )
    return x[1600:], y[1600:]


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="selfmaker-quickstart-"))
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "local")  # boto3 signs requests; any value works locally
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local")
    proc, url = start_platform(work)
    print(f"selfmaker up is listening on {url} (home {work}); its web console: {url}/console")
    try:
        # ---- the SageMaker part: plain boto3, only endpoint_url differs ------------------------------
        sm = boto3.client("sagemaker", endpoint_url=url, region_name="us-east-1")
        runtime = boto3.client("sagemaker-runtime", endpoint_url=url, region_name="us-east-1")
        wait = {"Delay": 1, "MaxAttempts": 300}

        x_test, y_test = make_dataset(work / "data")
        data = (work / "data").as_uri()
        sm.create_training_job(
            TrainingJobName="quickstart-xgb",
            RoleArn=ROLE,
            AlgorithmSpecification={
                "TrainingImage": XGBOOST_IMAGE,
                "TrainingInputMode": "File",
                "MetricDefinitions": [{"Name": "validation:auc", "Regex": r"#011validation-auc:([0-9.]+)"}],
            },
            HyperParameters={
                "objective": "binary:logistic",
                "num_round": "40",
                "max_depth": "4",
                "eval_metric": "auc",
            },
            InputDataConfig=[
                {
                    "ChannelName": ch,
                    "ContentType": "text/csv",
                    "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"{data}/{ch}"}},
                }
                for ch in ("train", "validation")
            ],
            OutputDataConfig={"S3OutputPath": (work / "output").as_uri()},
            ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 5},
            StoppingCondition={"MaxRuntimeInSeconds": 600},
        )
        sm.get_waiter("training_job_completed_or_stopped").wait(
            TrainingJobName="quickstart-xgb", WaiterConfig=wait
        )
        job = sm.describe_training_job(TrainingJobName="quickstart-xgb")
        print(
            f"training job: {job['TrainingJobStatus']} in {job.get('TrainingTimeInSeconds')} s, "
            f"metrics {[(m['MetricName'], round(m['Value'], 4)) for m in job['FinalMetricDataList']]}"
        )
        if job["TrainingJobStatus"] != "Completed":
            raise SystemExit(f"training failed: {job.get('FailureReason')}")
        artifact = job["ModelArtifacts"]["S3ModelArtifacts"]

        sm.create_model(
            ModelName="quickstart-model",
            ExecutionRoleArn=ROLE,
            PrimaryContainer={"Image": XGBOOST_IMAGE, "ModelDataUrl": artifact},
        )
        sm.create_endpoint_config(
            EndpointConfigName="quickstart-config",
            ProductionVariants=[
                {
                    "VariantName": "Champion",
                    "ModelName": "quickstart-model",
                    "InstanceType": "ml.m5.large",
                    "InitialInstanceCount": 1,
                    "InitialVariantWeight": 0.8,
                },
                {
                    "VariantName": "Challenger",
                    "ModelName": "quickstart-model",
                    "InstanceType": "ml.m5.large",
                    "InitialInstanceCount": 1,
                    "InitialVariantWeight": 0.2,
                },
            ],
        )
        sm.create_endpoint(EndpointName="quickstart", EndpointConfigName="quickstart-config")
        sm.get_waiter("endpoint_in_service").wait(EndpointName="quickstart", WaiterConfig=wait)
        print("endpoint quickstart is", sm.describe_endpoint(EndpointName="quickstart")["EndpointStatus"])

        def invoke(row: np.ndarray, **kwargs: str) -> tuple[str, float, float]:
            start = time.perf_counter()
            resp = runtime.invoke_endpoint(
                EndpointName="quickstart",
                ContentType="text/csv",
                Body=",".join(f"{v:.5f}" for v in row),
                **kwargs,
            )
            score = float(resp["Body"].read())
            return resp["InvokedProductionVariant"], score, (time.perf_counter() - start) * 1000

        results = [invoke(x_test[i % len(x_test)]) for i in range(400)]
        split = Counter(variant for variant, _, _ in results)
        latencies = sorted(ms for _, _, ms in results)
        accuracy = np.mean(
            [(score >= 0.5) == y_test[i % len(y_test)] for i, (_, score, _) in enumerate(results)]
        )
        print(
            f"400 invocations: split {dict(split)} "
            f"({split['Champion'] / 4:.0f}% / {split['Challenger'] / 4:.0f}%), accuracy {accuracy:.3f}, "
            f"latency p50 {statistics.median(latencies):.2f} ms, p99 "
            f"{latencies[int(len(latencies) * 0.99) - 1]:.2f} ms"
        )

        sm.update_endpoint_weights_and_capacities(
            EndpointName="quickstart",
            DesiredWeightsAndCapacities=[
                {"VariantName": "Champion", "DesiredWeight": 0.2},
                {"VariantName": "Challenger", "DesiredWeight": 0.8},
            ],
        )
        sm.get_waiter("endpoint_in_service").wait(EndpointName="quickstart", WaiterConfig=wait)
        split = Counter(invoke(x_test[i % len(x_test)])[0] for i in range(200))
        print(f"after shifting weights to 20/80: {dict(split)}")
        targeted = Counter(invoke(x_test[i], TargetVariant="Champion")[0] for i in range(20))
        print(f"TargetVariant=Champion: {dict(targeted)}")

        sm.delete_endpoint(EndpointName="quickstart")
        sm.get_waiter("endpoint_deleted").wait(EndpointName="quickstart", WaiterConfig=wait)
        sm.delete_endpoint_config(EndpointConfigName="quickstart-config")
        sm.delete_model(ModelName="quickstart-model")
        print("cleaned up: endpoint, endpoint config and model deleted")
        return 0
    finally:
        stop_platform(proc)
        shutil.rmtree(work, ignore_errors=True)
        print("selfmaker up stopped")


if __name__ == "__main__":
    raise SystemExit(main())
