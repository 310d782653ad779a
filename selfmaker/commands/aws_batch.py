"""The ``--aws-batch`` forms of ``selfmaker train``, ``transform``, ``logs`` and ``status``.

``selfmaker train REQUEST.json --aws-batch QUEUE`` and ``selfmaker transform REQUEST.json --aws-batch QUEUE``
take the request files the local commands take, submit them to a ``selfmaker:jobs`` stack's queue and wait
(unless ``--no-wait``); ``selfmaker logs JOB_ID --aws-batch`` prints the job's CloudWatch log streams and
``selfmaker status --aws-batch QUEUE`` lists running and recent jobs. Exit codes: 0 succeeded (or submitted
with ``--no-wait``), 1 the job failed, 2 refused before anything was submitted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from batch.awsbatch import recorded_records
from batch.cli import platform_url, resolve_model
from batch.errors import InputError, TransformRequestError
from batch.request import parse_request
from selfmaker.api.validation import service_model, validate_request
from selfmaker.errors import ValidationException
from selfmaker.jobs.aws_batch import (
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    AwsBatchError,
    BatchJobs,
    array_counts,
    check_training_request,
    progress_line,
    submit_training,
    submit_transform,
    watch,
)


def _read_request(prog: str, path: str) -> dict[str, Any] | None:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        request = json.loads(text)
    except (OSError, ValueError) as exc:
        print(f"{prog}: cannot read the request {path}: {exc}", file=sys.stderr)
        return None
    if not isinstance(request, dict):
        print(f"{prog}: the request must be a JSON object", file=sys.stderr)
        return None
    return request


def _text(doc: str | None) -> str:
    """A docstring as ``--help`` prints it (single backticks, as the other commands' help texts have)."""
    return (doc or "").replace("``", "`")


def _jobs(prog: str) -> Any:

    try:
        return BatchJobs()
    except AwsBatchError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return None


class _Bar:
    """One status line, redrawn in place on a terminal and every ``every`` seconds otherwise."""

    def __init__(self, stream: TextIO, every: float = 15.0) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.every = every
        self._last = 0.0
        self._drawn = False

    def show(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r" + text + "\033[K")
            self._drawn = True
        elif time.monotonic() - self._last >= self.every:
            self._last = time.monotonic()
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()


def _left_running(prog: str, submitted: Any) -> int:
    """Ctrl-C while waiting: the job goes on in AWS Batch; say how to follow it (exit 130, as for SIGINT)."""
    print(
        f"\n{prog}: stopped waiting; job {submitted.job_id} ({submitted.job_name}) "
        f"goes on in {submitted.queue}: "
        f"`selfmaker status --aws-batch {submitted.queue}`, `selfmaker logs {submitted.job_id} --aws-batch`",
        file=sys.stderr,
    )
    return 130


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--aws-batch", required=True, metavar="QUEUE", help="job queue name or ARN of a selfmaker:jobs stack"
    )
    parser.add_argument("--no-wait", action="store_true", help="submit and return; do not wait for the job")
    parser.add_argument("--poll", type=float, default=5.0, help="seconds between status checks while waiting")


def transform_main(argv: list[str]) -> int:
    """``selfmaker transform REQUEST.json --aws-batch QUEUE``: run a CreateTransformJob request as an array
    job."""
    parser = argparse.ArgumentParser(prog="selfmaker transform", description=_text(transform_main.__doc__))
    parser.add_argument("request", help="CreateTransformJob request as a JSON file ('-' for stdin)")
    _common(parser)
    parser.add_argument(
        "--children",
        type=int,
        help="array children to share the input among (default TransformResources.InstanceCount)",
    )
    parser.add_argument(
        "--part-mb", type=float, default=32.0, help="byte-range size large objects are split into"
    )
    parser.add_argument("--model-data", help="model.tar.gz in S3 (default: the ModelName's ModelDataUrl)")
    parser.add_argument(
        "--endpoint-url",
        default=None,
        help="selfmaker platform URL used to resolve ModelName "
        "(default $AWS_ENDPOINT_URL_SAGEMAKER, the `selfmaker up` of $SELFMAKER_HOME, else port 7070)",
    )
    parser.add_argument(
        "--state-uri",
        help="where the job keeps its plan and progress "
        "(default s3://<output bucket>/selfmaker-jobs/transform/<job>/)",
    )
    args = parser.parse_args(argv)
    prog = "selfmaker transform"

    request = _read_request(prog, args.request)
    if request is None:
        return 2
    try:
        parse_request(request)  # refused exactly as the local command refuses it, before any AWS call
    except TransformRequestError as exc:
        print(f"{prog}: ValidationException: {exc}", file=sys.stderr)
        return 2
    model_env: dict[str, str] = {}
    model = args.model_data
    if not model:
        name = request.get("ModelName")
        if not name:
            print(f"{prog}: the request has no ModelName; pass --model-data", file=sys.stderr)
            return 2
        try:
            model, model_env = resolve_model(str(name), platform_url(args.endpoint_url), "--model-data")
        except ValueError as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return 2
    jobs = _jobs(prog)
    if jobs is None:
        return 2
    try:
        submitted = submit_transform(
            jobs,
            request,
            args.aws_batch,
            model=model,
            model_environment=model_env,
            children=args.children,
            part_mb=args.part_mb,
            state=args.state_uri,
        )
    except TransformRequestError as exc:
        print(f"{prog}: ValidationException: {exc}", file=sys.stderr)
        return 2
    except (InputError, AwsBatchError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    try:
        return _follow_transform(prog, args, jobs, submitted)
    except KeyboardInterrupt:  # from the moment the job exists: it goes on without us
        return _left_running(prog, submitted)


def _follow_transform(prog: str, args: argparse.Namespace, jobs: BatchJobs, submitted: Any) -> int:
    """Print what was submitted and, unless ``--no-wait``, wait with the progress bar; the exit code."""
    if submitted.nothing_to_do:
        print(f"every output already exists: {submitted.outputs}")
        return 0
    print(
        f"submitted {submitted.job_id} ({submitted.job_name}) to {submitted.queue}: {submitted.shares} "
        "share(s)",
        flush=True,
    )
    if args.no_wait:
        print(
            f"follow it with `selfmaker status --aws-batch {submitted.queue}` and "
            f"`selfmaker logs {submitted.job_id} --aws-batch`; outputs go to {submitted.outputs}"
        )
        return 0

    bar = _Bar(sys.stderr)
    started = time.monotonic()
    first = [-1]

    def on_poll(job: dict[str, Any]) -> None:
        try:
            records, _ = recorded_records(submitted.state)
        except Exception:  # noqa: BLE001 - the bar is best effort; the job's status decides the outcome
            records = 0
        if first[0] < 0:
            first[0] = records  # rows an earlier submission finished are not this run's
        bar.show(progress_line(job, records - first[0], time.monotonic() - started))

    try:
        outcome = watch(jobs, submitted.job_id, unit="share", on_poll=on_poll, interval=args.poll)
    finally:
        bar.close()
    if outcome.status == "SUCCEEDED":
        print(f"TransformJobStatus: Completed\noutputs: {submitted.outputs}")
        return 0
    print("TransformJobStatus: Failed", file=sys.stderr)
    for line in outcome.failed:
        print(f"{prog}: {line}", file=sys.stderr)
    print("re-run the same command to run only the shares whose outputs are missing", file=sys.stderr)
    return 1


def train_main(argv: list[str]) -> int:
    """``selfmaker train REQUEST.json --aws-batch QUEUE``: run a CreateTrainingJob request on AWS Batch."""
    parser = argparse.ArgumentParser(prog="selfmaker train", description=_text(train_main.__doc__))
    parser.add_argument("request", help="CreateTrainingJob request as a JSON file ('-' for stdin)")
    _common(parser)
    args = parser.parse_args(argv)
    prog = "selfmaker train"

    request = _read_request(prog, args.request)
    if request is None:
        return 2

    try:
        check_training_request(request)
        # the shape `selfmaker up` checks CreateTrainingJob against, with its message
        validate_request(service_model().operation_model("CreateTrainingJob"), request)
    except AwsBatchError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except ValidationException as exc:
        print(f"{prog}: ValidationException: {exc}", file=sys.stderr)
        return 2
    jobs = _jobs(prog)
    if jobs is None:
        return 2
    try:
        submitted = submit_training(jobs, request, args.aws_batch)
    except AwsBatchError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    try:
        return _follow_training(prog, args, jobs, submitted)
    except KeyboardInterrupt:  # from the moment the job exists: it goes on without us
        return _left_running(prog, submitted)


def _follow_training(prog: str, args: argparse.Namespace, jobs: BatchJobs, submitted: Any) -> int:
    """Print what was submitted and, unless ``--no-wait``, wait printing status changes; the exit code."""
    print(f"submitted {submitted.job_id} ({submitted.job_name}) to {submitted.queue}", flush=True)
    if args.no_wait:
        print(
            f"follow it with `selfmaker logs {submitted.job_id} --aws-batch`; the model goes to "
            f"{submitted.outputs}"
        )
        return 0
    last = [""]

    def on_poll(job: dict[str, Any]) -> None:
        if job.get("status") != last[0]:
            last[0] = str(job.get("status"))
            print(f"[{submitted.job_name}] {last[0]}", flush=True)

    outcome = watch(jobs, submitted.job_id, unit="node", on_poll=on_poll, interval=args.poll)
    if outcome.status == "SUCCEEDED":
        print(f"TrainingJobStatus: Completed\nmodel: {submitted.outputs}")
        return 0
    print("TrainingJobStatus: Failed", file=sys.stderr)
    for line in outcome.failed:
        print(f"{prog}: {line}", file=sys.stderr)
    return 1


def logs_main(argv: list[str]) -> int:
    """``selfmaker logs JOB_ID --aws-batch``: the CloudWatch log streams of a job, its children or nodes."""
    parser = argparse.ArgumentParser(prog="selfmaker logs", description=_text(logs_main.__doc__))
    parser.add_argument("job", help="the AWS Batch job id (printed when it was submitted)")
    parser.add_argument(
        "--aws-batch", action="store_true", required=True, help="read from AWS Batch / CloudWatch"
    )
    parser.add_argument("--tail", type=int, default=0, help="only the last N lines of each stream")
    args = parser.parse_args(argv)

    jobs = _jobs("selfmaker logs")
    if jobs is None:
        return 2
    try:
        job = jobs.describe(args.job)
        group = jobs.log_group(job)
        printed = 0
        for child in jobs.children(job):
            stream = jobs.log_stream(child)
            if not stream:
                continue
            print(f"==> {group} {stream} ({child.get('jobId')}, {child.get('status')}) <==")
            lines = list(jobs.log_events(group, stream))
            if not lines:
                print("(no log events yet)")
            for line in lines[-args.tail :] if args.tail else lines:
                print(line)
            printed += 1
    except AwsBatchError as exc:
        print(f"selfmaker logs: {exc}", file=sys.stderr)
        return 1
    if not printed:
        print(f"selfmaker logs: job {args.job} ({job.get('status')}) has no log stream yet", file=sys.stderr)
        return 1
    return 0


def _when(millis: Any) -> str:
    if not millis:
        return "-"
    return datetime.fromtimestamp(int(millis) / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def status_main(argv: list[str]) -> int:
    """``selfmaker status --aws-batch QUEUE``: running and recent jobs of a queue."""
    parser = argparse.ArgumentParser(prog="selfmaker status", description=_text(status_main.__doc__))
    parser.add_argument("--aws-batch", required=True, metavar="QUEUE", help="job queue name or ARN")
    parser.add_argument("--limit", type=int, default=20, help="most finished jobs to list (default 20)")
    args = parser.parse_args(argv)

    jobs = _jobs("selfmaker status")
    if jobs is None:
        return 2
    try:
        queue = jobs.queue(args.aws_batch)
        active = jobs.jobs(queue, ACTIVE_STATUSES)
        recent = jobs.jobs(queue, FINAL_STATUSES)[: max(0, args.limit)]
        # ListJobs' summaries may lack the array size, node count and reason (moto's do): describe them
        described = {
            str(j.get("jobId")): j
            for j in jobs.describe_all([str(j.get("jobId")) for j in [*active, *recent]])
        }
        active = [{**j, **described.get(str(j.get("jobId")), {})} for j in active]
        recent = [{**j, **described.get(str(j.get("jobId")), {})} for j in recent]
    except AwsBatchError as exc:
        print(f"selfmaker status: {exc}", file=sys.stderr)
        return 2
    print(f"queue {queue.name} ({queue.capacity}): {len(active)} running or waiting, {len(recent)} recent")
    rows = [("JOB ID", "NAME", "STATUS", "CHILDREN", "CREATED", "REASON")]
    for job in [*active, *recent]:
        size = (job.get("arrayProperties") or {}).get("size")
        nodes = (job.get("nodeProperties") or {}).get("numNodes")
        if size:
            done, failed, _ = array_counts(job)
            children = f"{done}/{size} shares done" + (f", {failed} failed" if failed else "")
        else:
            children = f"{nodes} nodes" if nodes else "1"
        rows.append(
            (
                str(job.get("jobId")),
                str(job.get("jobName")),
                str(job.get("status")),
                children,
                _when(job.get("createdAt")),
                str(job.get("statusReason") or "")[:60],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0
