"""The SageMaker Python SDK's ``logs=True`` against `selfmaker up` (the SDK in its own venv: tests/sdkkit.py).

``Estimator.fit(logs=True)`` and ``Transformer.wait(logs=True)`` read the jobs' logs through the CloudWatch
Logs API (DescribeLogStreams, then GetLogEvents from ``(timestamp, skip)`` positions, again every poll);
every line of the job's log file must show up in the SDK's output, once and in order.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from platform_helpers import PlatformProcess

from selfmaker.logfiles import LineParser

pytestmark = pytest.mark.slow

SCRIPT = """
import numpy as np
from sagemaker.estimator import Estimator
from sagemaker.inputs import TrainingInput

rng = np.random.default_rng(0)
X = rng.normal(size=(400, 4))
y = (X[:, 0] - X[:, 1] > 0).astype(int)
def upload(rows, key):
    text = "\\n".join(",".join(f"{v:.6g}" for v in row) for row in rows)
    return session.upload_string_as_file_body(text, BUCKET, key)
train = upload(np.column_stack([y[:300], X[:300]]), "sdk-logs/train/train.csv")
validation = upload(np.column_stack([y[300:], X[300:]]), "sdk-logs/validation/validation.csv")
batch = upload(X[300:], "sdk-logs/batch/input.csv")
image = sagemaker.image_uris.retrieve("xgboost", "us-east-1", "1.7-1")
estimator = Estimator(
    image, ROLE, instance_count=1, instance_type="ml.m5.large", sagemaker_session=session,
    output_path=f"s3://{BUCKET}/sdk-logs/output",
    hyperparameters={"objective": "binary:logistic", "num_round": 12, "max_depth": 3, "eval_metric": "auc"},
)
print("=== fit ===", flush=True)
estimator.fit(
    {"train": TrainingInput(train, content_type="text/csv"),
     "validation": TrainingInput(validation, content_type="text/csv")},
    logs=True,
)
print("=== transform ===", flush=True)
transformer = estimator.transformer(
    1, "ml.m5.large", output_path=f"s3://{BUCKET}/sdk-logs/transform-out", accept="text/csv"
)
transformer.transform(batch, content_type="text/csv", split_type="Line", wait=False)
transformer.wait(logs=True)
print("=== end ===", flush=True)
described = session.sagemaker_client.describe_transform_job(
    TransformJobName=transformer.latest_transform_job.name
)
assert described["TransformJobStatus"] == "Completed", described
result({"training": estimator.latest_training_job.name, "transform": transformer.latest_transform_job.name})
"""


def _messages(path: Path) -> list[str]:
    """The events of a log file as the CloudWatch view gives them (stamp and host marker removed)."""
    parser = LineParser()
    return [
        parser.parse(raw).message.decode("utf-8", errors="replace")
        for raw in path.read_bytes().split(b"\n")[:-1]
    ]


def _check_printed(expected: list[str], printed: str) -> None:
    """Every non-empty line of ``expected`` is in ``printed``, in order and as often as in the file.

    A printed line may carry a prefix: the SDK prints its status message without a line end, so the first
    log line follows it on the same line ("… Training in progress.Running built-in algorithm …").
    """
    lines = printed.splitlines()
    wanted = [line for line in expected if line.strip()]
    position = 0
    for line in wanted:
        while position < len(lines) and not lines[position].endswith(line):
            position += 1
        assert position < len(lines), f"not printed (in order): {line!r}\n{printed}"
        position += 1
    for line in set(wanted):
        assert sum(p.endswith(line) for p in lines) == wanted.count(line), f"printed again: {line!r}"


def test_fit_and_transformer_wait_stream_the_job_logs(
    run_sdk: Callable[..., object], sdk_platform: PlatformProcess
) -> None:
    """The SDK prints every line of the training log and then of the transform log, once, in order."""
    run = run_sdk(SCRIPT)
    out = run.result  # type: ignore[attr-defined]
    stdout: str = run.stdout  # type: ignore[attr-defined]
    fit_part, _, rest = stdout.partition("=== fit ===")[2].partition("=== transform ===")
    transform_part = rest.partition("=== end ===")[0]
    logs = sdk_platform.home / "logs"

    training = _messages(logs / "training-jobs" / f"{out['training']}.log")
    assert any("validation-auc" in line for line in training), training[-5:]
    _check_printed(training, fit_part)

    transform = _messages(logs / "transform-jobs" / f"{out['transform']}.log")
    assert any(line.startswith("Completed: ") for line in transform), transform
    _check_printed(transform, transform_part)


PROC_SCRIPT = """
import json, sys
from pathlib import Path
host = json.loads(Path("/opt/ml/config/resourceconfig.json").read_text())["current_host"]
rows = sum(len(p.read_text().split()) for p in Path("/opt/ml/processing/input/data").glob("*.csv"))
for i in range(40):
    print(f"{host} step {i} of {rows} rows", flush=True)
print(f"{host} says goodbye on stderr", file=sys.stderr, flush=True)
"""

PROCESSING = f"""
from pathlib import Path
from sagemaker.processing import ProcessingInput, ScriptProcessor

Path("proc.py").write_text({PROC_SCRIPT!r})
data = session.upload_string_as_file_body("1\\n2\\n3\\n", BUCKET, "sdk-logs-proc/data/a.csv")
data = data.rsplit("/", 1)[0]
image = sagemaker.image_uris.retrieve("xgboost", "us-east-1", "1.7-1")
processor = ScriptProcessor(
    role=ROLE, image_uri=image, command=["python3"], instance_count=2, instance_type="ml.m5.large",
    sagemaker_session=session,
)
print("=== run ===", flush=True)
processor.run(
    code="proc.py",
    inputs=[ProcessingInput(source=data, destination="/opt/ml/processing/input/data")],
    logs=True,
)
print("=== end ===", flush=True)
job = processor.jobs[-1].describe()
assert job["ProcessingJobStatus"] == "Completed", job
result({{"job": job["ProcessingJobName"]}})
"""


def test_script_processor_run_streams_every_host(
    run_sdk: Callable[..., object], sdk_platform: PlatformProcess
) -> None:
    """A 2-host ``ScriptProcessor.run(logs=True)`` prints the script's lines of both hosts (stdout and
    stderr), each host's in order and once."""
    run = run_sdk(PROCESSING)
    out = run.result  # type: ignore[attr-defined]
    stdout: str = run.stdout  # type: ignore[attr-defined]
    printed = stdout.partition("=== run ===")[2].partition("=== end ===")[0]
    messages = _messages(sdk_platform.home / "logs" / "processing-jobs" / f"{out['job']}.log")
    for host in ("algo-1", "algo-2"):
        lines = [f"{host} step {i} of 3 rows" for i in range(40)] + [f"{host} says goodbye on stderr"]
        assert set(lines) <= set(messages)
        _check_printed(lines, printed)  # each host's stream in order (the SDK interleaves them by time)
