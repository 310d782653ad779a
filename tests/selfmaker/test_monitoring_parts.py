"""Parts of Model Monitor's schedules (selfmaker/jobs/monitoring.py): the cron expressions SageMaker allows,
their ticks, NOW windows, execution statuses read off processing jobs, and the clock on a real store."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from selfmaker.commands.status import collect
from selfmaker.errors import ValidationException
from selfmaker.jobs.monitoring import (
    EXECUTION,
    MonitoringManager,
    execution_status,
    parse_offset,
    parse_schedule,
)
from selfmaker.jobs.processing import ProcessingJobs
from selfmaker.settings import PlatformSettings
from selfmaker.state import Record, StateStore


def _at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize(
    ("expression", "cron"),
    [
        ("cron(0 * ? * * *)", "0 * * * *"),
        ("cron(0 7 ? * * *)", "0 7 * * *"),
        ("cron(0 0/6 ? * * *)", "0 0/6 * * *"),
        ("cron(0 12 * * ? *)", "0 12 * * *"),
        ("NOW", None),
    ],
)
def test_the_expressions_sagemaker_allows(expression: str, cron: str | None) -> None:
    assert parse_schedule(expression).cron == cron


@pytest.mark.parametrize(
    "expression",
    [
        "cron(15 * ? * * *)",
        "cron(0 24 ? * * *)",
        "cron(0 * ? * MON *)",
        "cron(0 * 1 * ? *)",
        "rate(1 hour)",
        "",
    ],
)
def test_other_expressions_are_refused(expression: str) -> None:
    with pytest.raises(ValidationException, match="Invalid ScheduleExpression"):
        parse_schedule(expression)


def test_ticks_and_windows() -> None:
    hourly = parse_schedule("cron(0 * ? * * *)")
    assert hourly.latest_tick(_at("2026-12-08T09:59:00"), _at("2026-12-08T10:20:00")) == _at(
        "2026-12-08T10:00:00"
    )
    assert hourly.latest_tick(_at("2026-12-08T10:00:00"), _at("2026-12-08T10:20:00")) is None
    # several missed ticks run once, at the latest
    assert hourly.latest_tick(_at("2026-12-08T01:00:00"), _at("2026-12-08T10:20:00")) == _at(
        "2026-12-08T10:00:00"
    )
    six = parse_schedule("cron(0 0/6 ? * * *)")
    assert six.latest_tick(_at("2026-12-08T00:30:00"), _at("2026-12-08T11:59:00")) == _at(
        "2026-12-08T06:00:00"
    )
    assert parse_schedule("NOW").latest_tick(0, _at("2026-12-08T10:00:00")) is None
    assert parse_offset("-PT2H", "DataAnalysisStartTime", timedelta()) == timedelta(hours=2)
    assert parse_offset("-PT90M", "x", timedelta()) == timedelta(minutes=90)
    assert parse_offset(None, "x", timedelta(hours=1)) == timedelta(hours=1)
    with pytest.raises(ValidationException, match="DataAnalysisEndTime"):
        parse_offset("PT1H", "DataAnalysisEndTime", timedelta())


def _job(status: str, **doc: str) -> Record:
    return Record("processing-job", "j", "arn:j", status, 0.0, 0.0, dict(doc))


def test_execution_status_is_read_off_the_processing_job() -> None:
    execution = Record(EXECUTION, "e", "arn:e", None, 0.0, 0.0, {"ProcessingJobName": "j"})
    assert execution_status(execution, None) == ("Pending", None)
    assert execution_status(execution, _job("InProgress")) == ("InProgress", None)
    done = _job("Completed", ExitMessage="Completed: Job completed successfully with no violations.")
    assert execution_status(execution, done) == ("Completed", None)
    flagged = _job(
        "Completed", ExitMessage="CompletedWithViolations: Job completed successfully with 2 violations."
    )
    assert execution_status(execution, flagged) == ("CompletedWithViolations", None)
    assert execution_status(execution, _job("Failed", FailureReason="AlgorithmError: x")) == (
        "Failed",
        "AlgorithmError: x",
    )
    unstarted = Record(EXECUTION, "e", "arn:e", None, 0.0, 0.0, {"FailureReason": "Job inputs had no data"})
    assert execution_status(unstarted, None) == ("Failed", "Job inputs had no data")


def test_the_clock_runs_a_due_schedule_once_and_an_empty_hour_fails(tmp_path: Path) -> None:
    settings = PlatformSettings(home=tmp_path / "home")
    settings.home.mkdir()
    store = StateStore(settings.db_path)
    try:
        capture = tmp_path / "capture"
        capture.mkdir()
        config = {
            "ProductionVariants": [{"VariantName": "AllTraffic"}],
            "DataCaptureConfig": {"DestinationS3Uri": capture.as_uri(), "EnableCapture": True},
        }
        store.insert(Record("endpoint", "ep", "arn:ep", "InService", 0.0, 0.0, {"_Config": config}))
        manager = MonitoringManager(settings, store, ProcessingJobs(settings, store))
        definition = {
            "MonitoringInputs": [
                {"EndpointInput": {"EndpointName": "ep", "LocalPath": "/opt/ml/processing/input"}}
            ],
            "MonitoringOutputConfig": {
                "MonitoringOutputs": [
                    {"S3Output": {"S3Uri": "s3://b/reports", "LocalPath": "/opt/ml/processing/output"}}
                ]
            },
            "MonitoringResources": {
                "ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.large", "VolumeSizeInGB": 1}
            },
            "MonitoringAppSpecification": {"ImageUri": "sagemaker-model-monitor-analyzer"},
            "RoleArn": "arn:aws:iam::123456789012:role/r",
        }
        manager.create(
            "hourly",
            {
                "ScheduleConfig": {"ScheduleExpression": "cron(0 * ? * * *)"},
                "MonitoringJobDefinition": definition,
            },
            None,
        )
        later = store.get("monitoring-schedule", "hourly")
        assert later is not None and later.status == "Scheduled"
        assert manager.executions("hourly") == []  # not due yet, and SELFMAKER_MONITORING_RUN_NOW is off
        due = later.created + 3 * 3600
        assert manager.tick(due) == []  # ran, but nothing was captured in that hour: no processing job
        assert manager.tick(due) == []  # a tick runs once
        executions = manager.executions("hourly")
        assert len(executions) == 1
        summary = manager.execution_summary(executions[0])
        assert summary["MonitoringExecutionStatus"] == "Failed"
        assert summary["FailureReason"] == "Job inputs had no data"
        tick = datetime.fromtimestamp(due, timezone.utc).replace(minute=0, second=0, microsecond=0)
        assert summary["ScheduledTime"] == tick.timestamp()
        manager.stop("hourly")
        assert manager.tick(due + 3600) == [] and len(manager.executions("hourly")) == 1  # stopped: no run
        assert collect(settings.home)["monitoring-schedule"] == [
            {"Name": "hourly", "Status": "Stopped", "EndpointName": "ep"}
        ]  # what `selfmaker status` prints

        # updated to NOW, a started schedule runs once at once, over DataAnalysisStartTime..EndTime
        manager.start("hourly")
        now_config = {
            "ScheduleConfig": {
                "ScheduleExpression": "NOW",
                "DataAnalysisStartTime": "-PT2H",
                "DataAnalysisEndTime": "-PT0H",
            },
            "MonitoringJobDefinition": definition,
        }
        manager.update("hourly", now_config)
        assert len(manager.executions("hourly")) == 2
        assert manager.tick(due + 7200) == [] and len(manager.executions("hourly")) == 2  # NOW has no ticks
        manager.update(
            "hourly", {**now_config, "ScheduleConfig": {"ScheduleExpression": "cron(0 * ? * * *)"}}
        )

        # a restart: the schedule is still there; the ticks missed while the platform was down are skipped
        store.update("monitoring-schedule", "hourly", merge={"_LastTick": time.time() - 5 * 3600})
        restarted = MonitoringManager(settings, store, ProcessingJobs(settings, store))
        restarted.start_clock()
        try:
            assert restarted.find("hourly").status == "Scheduled"
            assert restarted.tick() == [] and len(restarted.executions("hourly")) == 2
        finally:
            restarted.stop_clock()
    finally:
        store.close()
