"""`selfmaker status`: endpoints, variants, instances and jobs of a selfmaker home."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any

from selfmaker.api.metrics import status_lines
from selfmaker.features.async_inference.supervisor import backlog_by_endpoint, endpoint_backlog
from selfmaker.jobs.tuning import KIND as TUNING_KIND
from selfmaker.jobs.tuning import best_of, counters, training_job_summaries
from selfmaker.settings import PlatformSettings
from selfmaker.state import StateStore


def _time(value: float | None) -> str:
    if value is None:
        return "-"
    return dt.datetime.fromtimestamp(value, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def collect(home: Path) -> dict[str, Any]:
    """Everything `status` shows, as data."""
    store = StateStore(home / "state.db")
    async_backlog = backlog_by_endpoint(home)
    try:
        instances = store.instances()
        endpoints = []
        for record in store.list("endpoint"):
            variants = []
            for v in record.doc.get("ProductionVariants") or []:
                variants.append(
                    {
                        **v,
                        "Instances": [
                            i
                            for i in instances
                            if i["EndpointName"].lower() == record.name.lower()
                            and i["VariantName"] == v["VariantName"]
                        ],
                    }
                )
            endpoints.append(
                {
                    "EndpointName": record.name,
                    "EndpointStatus": record.status,
                    "EndpointConfigName": record.doc.get("EndpointConfigName"),
                    "FailureReason": record.doc.get("FailureReason"),
                    "Variants": variants,
                    "CreationTime": record.created,
                    "AsyncBacklog": endpoint_backlog(async_backlog, record.name, record.doc),
                    "Metrics": record.doc.get("_Metrics"),
                }
            )  # serverless/shadow/deployment numbers
        jobs = [
            {
                "TrainingJobName": r.name,
                "TrainingJobStatus": r.status,
                "SecondaryStatus": r.doc.get("SecondaryStatus"),
                "FailureReason": r.doc.get("FailureReason"),
                "CreationTime": r.created,
                "WarmPoolStatus": r.doc.get("WarmPoolStatus"),
            }
            for r in store.list("training-job")
        ]
        tuning = []
        for r in store.list(TUNING_KIND):
            summaries = training_job_summaries(store, r)
            best = best_of(summaries)
            tuning.append(
                {
                    "HyperParameterTuningJobName": r.name,
                    "HyperParameterTuningJobStatus": r.status,
                    "Strategy": (r.doc.get("HyperParameterTuningJobConfig") or {}).get("Strategy"),
                    "TrainingJobStatusCounters": counters(summaries)[0],
                    "BestTrainingJob": best["TrainingJobName"] if best else None,
                    "BestObjective": best["FinalHyperParameterTuningJobObjectiveMetric"] if best else None,
                    "FailureReason": r.doc.get("FailureReason"),
                    "CreationTime": r.created,
                }
            )
        other = {
            kind: [{"Name": r.name, "Status": r.status} for r in store.list(kind)]
            for kind in ("transform-job", "processing-job")
        }
        schedules = [
            {"Name": r.name, "Status": r.status, "EndpointName": r.doc.get("EndpointName")}
            for r in store.list("monitoring-schedule")
        ]
        return {
            "endpoints": endpoints,
            "training_jobs": jobs,
            "tuning_jobs": tuning,
            "instances": instances,
            **other,
            "monitoring-schedule": schedules,
            "models": [r.name for r in store.list("model")],
            "endpoint_configs": [r.name for r in store.list("endpoint-config")],
        }
    finally:
        store.close()


def main(argv: list[str]) -> int:
    """Print the state of the platform whose home is ``--home``."""
    parser = argparse.ArgumentParser(prog="selfmaker status", description=__doc__)
    parser.add_argument("--home", type=Path, help="state directory (default $SELFMAKER_HOME or ~/.selfmaker)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    home = args.home or PlatformSettings().home
    if not (home / "state.db").exists():
        print(f"no selfmaker state in {home}")
        return 1
    data = collect(home)
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    print(f"home: {home}")
    print(f"models: {len(data['models'])}   endpoint configs: {len(data['endpoint_configs'])}")
    print("\nENDPOINTS")
    if not data["endpoints"]:
        print("  (none)")
    for ep in data["endpoints"]:
        print(
            f"  {ep['EndpointName']}  {ep['EndpointStatus']}  config={ep['EndpointConfigName']}  "
            f"created={_time(ep['CreationTime'])}"
        )
        if ep.get("AsyncBacklog") is not None:
            print(f"    async backlog: {ep['AsyncBacklog']}")
        if ep["FailureReason"]:
            print(f"    failure: {ep['FailureReason']}")
        for v in ep["Variants"]:
            print(
                f"    variant {v['VariantName']}: weight={v.get('CurrentWeight')} "
                f"instances={v.get('CurrentInstanceCount', '-')}/{v.get('DesiredInstanceCount', '-')}"
            )
            for inst in v["Instances"]:
                print(f"      {inst['InstanceId']}  {inst['Status']}  {inst['Url']}  pid={inst['Pid']}")
        for line in status_lines(ep.get("Metrics")):
            print(line)
    print("\nTRAINING JOBS")
    if not data["training_jobs"]:
        print("  (none)")
    for job in data["training_jobs"]:
        print(
            f"  {job['TrainingJobName']}  {job['TrainingJobStatus']} ({job['SecondaryStatus']})  "
            f"created={_time(job['CreationTime'])}"
        )
        if job["FailureReason"]:
            print(f"    failure: {job['FailureReason']}")
        pool = job.get("WarmPoolStatus")
        if pool and pool.get("Status") in ("Available", "InUse"):
            print(f"    warm pool: {pool['Status']}")
    if data["tuning_jobs"]:
        print("\nHYPERPARAMETER TUNING JOBS")
    for job in data["tuning_jobs"]:
        jobs_line = " ".join(f"{k}={v}" for k, v in job["TrainingJobStatusCounters"].items() if v)
        print(
            f"  {job['HyperParameterTuningJobName']}  {job['HyperParameterTuningJobStatus']}  "
            f"{job['Strategy']}  jobs: {jobs_line or '-'}  created={_time(job['CreationTime'])}"
        )
        objective = job["BestObjective"]
        if objective:
            print(
                f"    best: {job['BestTrainingJob']}  {objective['MetricName']}={objective['Value']:g} "
                f"({objective['Type']})"
            )
        if job["FailureReason"]:
            print(f"    failure: {job['FailureReason']}")
    if data.get("transform-job"):
        print("\nTRANSFORM JOBS")
        for job in data["transform-job"]:
            print(f"  {job['Name']}  {job['Status']}")
    if data.get("processing-job"):
        print("\nPROCESSING JOBS")
        for job in data["processing-job"]:
            print(f"  {job['Name']}  {job['Status']}")
    if data.get("monitoring-schedule"):
        print("\nMONITORING SCHEDULES")
        for schedule in data["monitoring-schedule"]:
            print(f"  {schedule['Name']}  {schedule['Status']}  endpoint={schedule['EndpointName']}")
    return 0
