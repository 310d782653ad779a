"""The SageMaker Python SDK's processors (sagemaker<3, tests/sdkkit.py) against `selfmaker up`: a
notebook's ScriptProcessor, Processor, FrameworkProcessor and XGBoostProcessor run unchanged with the
built-in XGBoost image's URI (a local process here), S3 inputs and outputs in moto, ``code=`` uploaded by
the SDK, ``arguments=`` passed through and ``logs=True`` streaming the job's lines."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

pytestmark = pytest.mark.slow

#: the processing script every processor runs: sums the CSV values of its input, writes them to its output
SCRIPT = """
import argparse, json, os
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--scale", type=float, default=1.0)
args = parser.parse_args()
values = []
for path in sorted(Path("/opt/ml/processing/input/data").glob("*.csv")):
    values += [float(v) for v in path.read_text().split()]
resources = json.loads(Path("/opt/ml/config/resourceconfig.json").read_text())
out = Path("/opt/ml/processing/output")
out.mkdir(parents=True, exist_ok=True)
(out / "result.json").write_text(json.dumps({
    "total": sum(values) * args.scale, "count": len(values), "host": resources["current_host"],
}))
print(f"processed {len(values)} values on {resources['current_host']}", flush=True)
"""


def test_sdk_processors_run_scripts_over_s3(run_sdk: Callable[..., Any]) -> None:
    run = run_sdk(
        f"""
        from pathlib import Path
        from botocore.exceptions import ClientError
        from sagemaker.dataset_definition.inputs import AthenaDatasetDefinition, DatasetDefinition
        from sagemaker.processing import (
            FrameworkProcessor, ProcessingInput, ProcessingJob, ProcessingOutput, Processor, ScriptProcessor,
        )
        from sagemaker.xgboost import XGBoost, XGBoostProcessor

        SCRIPT = {SCRIPT!r}
        Path("proc.py").write_text(SCRIPT)
        Path("src").mkdir()
        Path("src/proc.py").write_text(SCRIPT)
        data = session.upload_string_as_file_body("1\\n2\\n3\\n4\\n", BUCKET, "sdk-proc/data/a.csv")
        data = data.rsplit("/", 1)[0]
        image = sagemaker.image_uris.retrieve("xgboost", "us-east-1", "1.7-1")
        s3 = boto_session.client("s3")
        out = {{}}

        def output_of(prefix):
            body = s3.get_object(Bucket=BUCKET, Key=prefix + "/result.json")["Body"].read()
            return json.loads(body)

        # ScriptProcessor: code= uploaded by the SDK, arguments= passed through
        script = ScriptProcessor(
            role=ROLE, image_uri=image, command=["python3"], instance_count=1, instance_type="ml.m5.large",
            sagemaker_session=session,
        )
        script.run(
            code="proc.py",
            inputs=[ProcessingInput(source=data, destination="/opt/ml/processing/input/data")],
            outputs=[ProcessingOutput(
                source="/opt/ml/processing/output", destination=f"s3://{{BUCKET}}/sdk-proc/script",
            )],
            arguments=["--scale", "2"],
            logs=True,
        )
        job = script.jobs[-1].describe()
        assert job["ProcessingJobStatus"] == "Completed", job
        out["script"] = output_of("sdk-proc/script")
        out["script_entrypoint"] = job["AppSpecification"]["ContainerEntrypoint"]

        # Processor: the script given as an input, the entrypoint written out
        code = session.upload_data("proc.py", BUCKET, "sdk-proc/code")
        plain = Processor(
            role=ROLE, image_uri=image, instance_count=1, instance_type="ml.m5.large",
            entrypoint=["python3", "/opt/ml/processing/input/code/proc.py"], sagemaker_session=session,
        )
        plain.run(
            inputs=[
                ProcessingInput(source=data, destination="/opt/ml/processing/input/data"),
                ProcessingInput(source=code, destination="/opt/ml/processing/input/code"),
            ],
            outputs=[ProcessingOutput(
                source="/opt/ml/processing/output", destination=f"s3://{{BUCKET}}/sdk-proc/plain",
            )],
            arguments=["--scale", "3"],
            logs=False,
        )
        assert plain.jobs[-1].describe()["ProcessingJobStatus"] == "Completed"
        out["plain"] = output_of("sdk-proc/plain")
        attached = ProcessingJob.from_processing_name(session, plain.jobs[-1].job_name)
        out["attached"] = [i.destination for i in attached.inputs] + [o.source for o in attached.outputs]

        # FrameworkProcessor: source_dir packed and unpacked by the SDK's runproc.sh, on two instances
        framework = FrameworkProcessor(
            estimator_cls=XGBoost, framework_version="1.7-1", image_uri=image, command=["python3"],
            role=ROLE, instance_count=2, instance_type="ml.m5.large", sagemaker_session=session,
        )
        framework.run(
            code="proc.py", source_dir="src",
            inputs=[ProcessingInput(source=data, destination="/opt/ml/processing/input/data")],
            outputs=[ProcessingOutput(
                source="/opt/ml/processing/output", destination=f"s3://{{BUCKET}}/sdk-proc/framework",
            )],
            arguments=["--scale", "4"],
            logs=False,
        )
        job = framework.jobs[-1].describe()
        assert job["ProcessingJobStatus"] == "Completed", job
        out["framework"] = output_of("sdk-proc/framework")
        out["framework_entrypoint"] = job["AppSpecification"]["ContainerEntrypoint"]

        # XGBoostProcessor: the SDK picks the built-in XGBoost image's URI itself
        xgb = XGBoostProcessor(
            framework_version="1.7-1", role=ROLE, instance_count=1, instance_type="ml.m5.large",
            sagemaker_session=session,
        )
        xgb.run(
            code="proc.py", source_dir="src",
            inputs=[ProcessingInput(source=data, destination="/opt/ml/processing/input/data")],
            outputs=[ProcessingOutput(
                source="/opt/ml/processing/output", destination=f"s3://{{BUCKET}}/sdk-proc/xgb",
            )],
            logs=False,
        )
        job = xgb.jobs[-1].describe()
        assert job["ProcessingJobStatus"] == "Completed", job
        out["xgb"] = output_of("sdk-proc/xgb")
        out["xgb_image"] = job["AppSpecification"]["ImageUri"]

        # what SageMaker refuses here: an Athena dataset as input
        athena = DatasetDefinition(
            local_path="/opt/ml/processing/input/athena",
            athena_dataset_definition=AthenaDatasetDefinition(
                catalog="c", database="d", query_string="select 1", output_s3_uri=f"s3://{{BUCKET}}/q",
                output_format="PARQUET",
            ),
        )
        try:
            plain.run(inputs=[ProcessingInput(input_name="athena", dataset_definition=athena)], logs=False)
        except ClientError as exc:
            out["athena"] = [exc.response["Error"]["Code"], exc.response["Error"]["Message"]]
        result(out)
        """
    )
    out = run.result
    # logs=True: the SDK streamed the script's print from the Logs API (/aws/sagemaker/ProcessingJobs)
    assert "processed 4 values on algo-1" in run.stdout
    assert out["script"] == {"total": 20.0, "count": 4, "host": "algo-1"}
    assert out["script_entrypoint"] == ["python3", "/opt/ml/processing/input/code/proc.py"]
    assert out["plain"] == {"total": 30.0, "count": 4, "host": "algo-1"}
    assert out["attached"] == [  # ProcessingJob.from_processing_name reads the job back
        "/opt/ml/processing/input/data",
        "/opt/ml/processing/input/code",
        "/opt/ml/processing/output",
    ]
    # both hosts wrote result.json to the same S3 prefix; either one's is there
    assert out["framework"]["total"] == 40.0 and out["framework"]["host"] in ("algo-1", "algo-2")
    assert out["framework_entrypoint"][0] == "/bin/bash"
    assert out["xgb"] == {"total": 10.0, "count": 4, "host": "algo-1"}
    assert out["xgb_image"].endswith("/sagemaker-xgboost:1.7-1")
    code, message = out["athena"]
    assert code == "ValidationException" and "DatasetDefinition is not supported" in message
