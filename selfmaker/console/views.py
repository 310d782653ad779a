"""The JSON documents behind the console's pages, built from what the platform already answers.

Records come through the registered control-plane operations (``DescribeEndpoint``, ``ListTrainingJobs``
…), so the console shows exactly what boto3 would see; what lives only in the running platform (the
instances of a variant, the serverless pools' figures) comes from :class:`selfmaker.services.Services`;
time series come from :mod:`selfmaker.console.series`. Every function here is read-only.

Names, tags, hyperparameters and log lines are returned as they are: the pages put them in the document as
text (``textContent``), never as markup.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

from selfmaker.api.metrics import collect
from selfmaker.console import series
from selfmaker.errors import ValidationException
from selfmaker.logfiles import job_host_logs, job_log_path
from selfmaker.services import Services

#: jobs of each kind listed on the overview (the newest first)
JOBS_LISTED = 20
#: lines of a job's log shown on its page
LOG_TAIL_LINES = 200
#: bytes read from the end of a log file for its tail
_TAIL_BYTES = 64 * 1024
#: the seconds over which the live traffic split is measured
SPLIT_SECONDS = 30
#: a transform job's progress line (selfmaker/jobs/transform.py writes one every 5 s)
_PROGRESS = re.compile(
    r"records=(\d+) bytes=(\d+)/(\d+) parts=(\d+)/(\d+) files=(\d+)/(\d+)",
)
#: the most training jobs of a tuning job drawn (pages of 100)
MAX_TRIALS = 500


async def call(platform: Services, operation: str, **params: Any) -> dict[str, Any]:
    """The answer of the control-plane ``operation`` (a registered handler) to ``params``."""
    handler = platform.registry.operations[operation]
    return dict(await handler(platform, params) or {})


def _variant_instances(platform: Services, endpoint: str) -> dict[str, list[dict[str, Any]]]:
    """The running model servers of each production variant of the live deployment."""
    runtime = platform.endpoints.live.get(endpoint.lower())
    if runtime is None:
        return {}
    return {name: variant.pool.describe() for name, variant in runtime.variants.items()}


def _variants(platform: Services, described: dict[str, Any], figures: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per production variant: weights (configured share of traffic), instances, serverless."""
    rows = described.get("ProductionVariants") or []
    total = sum(float(v.get("CurrentWeight") or 0.0) for v in rows) or 0.0
    instances = _variant_instances(platform, described["EndpointName"])
    serverless = figures.get("Serverless") or {}
    out = []
    for row in rows:
        weight = float(row.get("CurrentWeight") or 0.0)
        name = row["VariantName"]
        out.append(
            {
                "name": name,
                "weight": weight,
                "desiredWeight": row.get("DesiredWeight"),
                "configuredShare": weight / total if total else 0.0,
                "instanceCount": row.get("CurrentInstanceCount"),
                "desiredInstanceCount": row.get("DesiredInstanceCount"),
                "serverless": row.get("CurrentServerlessConfig"),
                "serverlessFigures": serverless.get(name),
                "instances": instances.get(name, []),
            }
        )
    return out


def _split(live: dict[str, Any], seconds: int) -> dict[str, Any]:
    """Each variant's share of the invocations of the last ``seconds`` (``shares`` None: no invocation
    then) and how many invocations that was."""
    counts = {
        name: sum(v or 0 for v in data.get("invocations", [])[-seconds:])
        for name, data in (live.get("variants") or {}).items()
    }
    total = sum(counts.values())
    shares = {name: count / total for name, count in counts.items()} if total else None
    return {"shares": shares, "invocations": total, "seconds": seconds}


async def overview(platform: Services) -> dict[str, Any]:
    """The overview page: every endpoint with its variants, live split and last minutes of traffic,
    and the newest jobs of each kind."""
    listed = await call(platform, "ListEndpoints", MaxResults=100, SortBy="Name", SortOrder="Ascending")
    figures = collect(platform)
    endpoints = []
    for summary in listed.get("Endpoints", []):
        name = summary["EndpointName"]
        try:
            described = await call(platform, "DescribeEndpoint", EndpointName=name)
        except ValidationException:  # deleted between the list and the describe
            continue
        live = series.live(platform, name, series.OVERVIEW_SECONDS)
        endpoints.append(
            {
                "name": name,
                "status": described.get("EndpointStatus"),
                "config": described.get("EndpointConfigName"),
                "failureReason": described.get("FailureReason"),
                "async": bool(described.get("AsyncInferenceConfig")),
                "variants": _variants(platform, described, figures.get(name, {})),
                "split": _split(live, SPLIT_SECONDS),
                "live": live,
                "backlog": series.backlog(platform, name) if described.get("AsyncInferenceConfig") else None,
            }
        )
    return {"now": time.time(), "endpoints": endpoints, "jobs": await jobs(platform)}


async def jobs(platform: Services) -> dict[str, list[dict[str, Any]]]:
    """The newest jobs of each kind (name, status, times)."""
    tuning = "HyperParameterTuningJob"
    kinds = (
        ("training", "ListTrainingJobs", "TrainingJobSummaries", "TrainingJob", "TrainingEndTime"),
        ("tuning", f"List{tuning}s", f"{tuning}Summaries", tuning, "HyperParameterTuningEndTime"),
        ("transform", "ListTransformJobs", "TransformJobSummaries", "TransformJob", "TransformEndTime"),
        ("processing", "ListProcessingJobs", "ProcessingJobSummaries", "ProcessingJob", "ProcessingEndTime"),
    )
    out: dict[str, list[dict[str, Any]]] = {}
    for kind, operation, member, prefix, ended in kinds:
        listed = await call(platform, operation, MaxResults=JOBS_LISTED, SortBy="CreationTime")
        out[kind] = [
            {
                "name": item[f"{prefix}Name"],
                "status": item.get(f"{prefix}Status"),
                "created": item.get("CreationTime"),
                "ended": item.get(ended),
            }
            for item in listed.get(member, [])
        ]
    return out


async def endpoint(platform: Services, name: str, window: str) -> dict[str, Any]:
    """The endpoint page: its variants and instances, per-variant series over ``window``
    (:data:`selfmaker.console.series.WINDOWS`) and the recent error lines of its model servers."""
    if window not in series.WINDOWS:
        raise ValidationException(f"window must be one of {', '.join(series.WINDOWS)}, not {window[:20]!r}.")
    described = await call(platform, "DescribeEndpoint", EndpointName=name)
    name = described["EndpointName"]
    figures = collect(platform).get(name, {})
    names = [v["VariantName"] for v in described.get("ProductionVariants") or []]
    live = series.live(platform, name, SPLIT_SECONDS)
    chosen = await series.window(platform, name, window, names)
    return {
        "now": time.time(),
        "name": name,
        "status": described.get("EndpointStatus"),
        "config": described.get("EndpointConfigName"),
        "failureReason": described.get("FailureReason"),
        "created": described.get("CreationTime"),
        "modified": described.get("LastModifiedTime"),
        "async": bool(described.get("AsyncInferenceConfig")),
        "variants": _variants(platform, described, figures),
        "split": _split(live, SPLIT_SECONDS),
        "window": window,
        "series": chosen,
        "backlog": series.backlog(platform, name) if described.get("AsyncInferenceConfig") else None,
        "errors": await asyncio.to_thread(series.recent_errors, platform, name),
    }


def _tail(paths: list[Path], lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of the files ``paths`` (in that order), as text."""
    out: list[str] = []
    for path in paths:
        try:
            with open(path, "rb") as handle:
                handle.seek(0, 2)
                size = handle.tell()
                handle.seek(max(0, size - _TAIL_BYTES))
                data = handle.read()
        except OSError:
            continue
        text = data.decode("utf-8", "replace").splitlines()
        if size > _TAIL_BYTES and text:
            text = text[1:]  # the first line read is cut
        out.extend(text)
    return out[-lines:]


def _job_log(platform: Services, kind: str, name: str) -> list[str]:
    logs = platform.settings.logs_dir
    hosts = job_host_logs(logs, kind, name)
    paths = [hosts[n] for n in sorted(hosts)] if hosts else [job_log_path(logs, kind, name)]
    return _tail(paths)


async def training_job(platform: Services, name: str) -> dict[str, Any]:
    """The training job page: status and its transitions, hyperparameters, metric curves, log tail."""
    described = await call(platform, "DescribeTrainingJob", TrainingJobName=name)
    name = described["TrainingJobName"]
    algorithm = described.get("AlgorithmSpecification") or {}
    tuning_arn = str(described.get("TuningJobArn") or "")
    return {
        "now": time.time(),
        "name": name,
        "status": described.get("TrainingJobStatus"),
        "secondaryStatus": described.get("SecondaryStatus"),
        "failureReason": described.get("FailureReason"),
        "image": algorithm.get("TrainingImage") or algorithm.get("AlgorithmName"),
        "instanceType": (described.get("ResourceConfig") or {}).get("InstanceType"),
        "instanceCount": (described.get("ResourceConfig") or {}).get("InstanceCount"),
        "created": described.get("CreationTime"),
        "started": described.get("TrainingStartTime"),
        "ended": described.get("TrainingEndTime"),
        # the tuning job that launched it (its ARN ends with the name)
        "tuningJob": tuning_arn.rpartition("/")[2] if tuning_arn else None,  # the ARN ends with the name
        "transitions": described.get("SecondaryStatusTransitions") or [],
        "hyperParameters": described.get("HyperParameters") or {},
        "finalMetrics": described.get("FinalMetricDataList") or [],
        "curves": await series.training_curves(platform, name, described),
        "log": await asyncio.to_thread(_job_log, platform, "training-job", name),
    }


async def tuning_job(platform: Services, name: str) -> dict[str, Any]:
    """The tuning job page: the objective of each trial in the order they started, and the best so far."""
    described = await call(platform, "DescribeHyperParameterTuningJob", HyperParameterTuningJobName=name)
    name = described["HyperParameterTuningJobName"]
    config = described.get("HyperParameterTuningJobConfig") or {}
    objective = config.get("HyperParameterTuningJobObjective") or {}
    maximize = objective.get("Type") == "Maximize"
    trials: list[dict[str, Any]] = []
    token = None
    while len(trials) < MAX_TRIALS:
        params: dict[str, Any] = {
            "HyperParameterTuningJobName": name,
            "SortBy": "CreationTime",
            "SortOrder": "Ascending",
            "MaxResults": 100,
        }
        if token:
            params["NextToken"] = token
        page = await call(platform, "ListTrainingJobsForHyperParameterTuningJob", **params)
        trials.extend(page.get("TrainingJobSummaries", []))
        token = page.get("NextToken")
        if not token:
            break
    rows, best = [], None
    for index, trial in enumerate(trials, start=1):
        value = (trial.get("FinalHyperParameterTuningJobObjectiveMetric") or {}).get("Value")
        if value is not None and (best is None or (value > best if maximize else value < best)):
            best = value
        rows.append(
            {
                "index": index,
                "name": trial.get("TrainingJobName"),
                "status": trial.get("TrainingJobStatus"),
                "objective": value,
                "bestSoFar": best,
                "hyperParameters": trial.get("TunedHyperParameters") or {},
            }
        )
    return {
        "now": time.time(),
        "name": name,
        "status": described.get("HyperParameterTuningJobStatus"),
        "failureReason": described.get("FailureReason"),
        "strategy": config.get("Strategy"),
        "objective": {"name": objective.get("MetricName"), "type": objective.get("Type")},
        "counters": described.get("TrainingJobStatusCounters") or {},
        "best": (described.get("BestTrainingJob") or {}).get("TrainingJobName"),
        "trials": rows,
    }


def transform_progress(lines: list[str]) -> dict[str, int] | None:
    """The last progress figures a transform job logged (records, bytes, parts and files done/total)."""
    for line in reversed(lines):
        found = _PROGRESS.search(line)
        if found:
            numbers = [int(g) for g in found.groups()]
            keys = (
                "records",
                "bytesDone",
                "bytesTotal",
                "partsDone",
                "partsTotal",
                "filesDone",
                "filesTotal",
            )
            return dict(zip(keys, numbers, strict=True))
    return None


async def transform_job(platform: Services, name: str) -> dict[str, Any]:
    """The transform job page: status, progress (from its log) and the log tail."""
    described = await call(platform, "DescribeTransformJob", TransformJobName=name)
    name = described["TransformJobName"]
    log = await asyncio.to_thread(_job_log, platform, "transform-job", name)
    return {
        "now": time.time(),
        "name": name,
        "status": described.get("TransformJobStatus"),
        "failureReason": described.get("FailureReason"),
        "model": described.get("ModelName"),
        "input": ((described.get("TransformInput") or {}).get("DataSource") or {})
        .get("S3DataSource", {})
        .get("S3Uri"),
        "output": (described.get("TransformOutput") or {}).get("S3OutputPath"),
        "created": described.get("CreationTime"),
        "started": described.get("TransformStartTime"),
        "ended": described.get("TransformEndTime"),
        "progress": transform_progress(log),
        "log": log,
    }


async def processing_job(platform: Services, name: str) -> dict[str, Any]:
    """The processing job page: status, times and the log tail."""
    described = await call(platform, "DescribeProcessingJob", ProcessingJobName=name)
    name = described["ProcessingJobName"]
    return {
        "now": time.time(),
        "name": name,
        "status": described.get("ProcessingJobStatus"),
        "failureReason": described.get("FailureReason") or described.get("ExitMessage"),
        "image": (described.get("AppSpecification") or {}).get("ImageUri"),
        "created": described.get("CreationTime"),
        "started": described.get("ProcessingStartTime"),
        "ended": described.get("ProcessingEndTime"),
        "log": await asyncio.to_thread(_job_log, platform, "processing-job", name),
    }
