"""Batch transform as an AWS Batch array job: the shares of a job, and the child that runs one share.

The submitter (``selfmaker transform REQUEST.json --aws-batch QUEUE``) plans the job with the engine's own
planner (:func:`batch.plan.make_plan`: whole objects, and byte ranges of large newline-delimited ones) and
writes the job's state prefix, which the children share::

    job.json        the CreateTransformJob request, the model data URI and the model's container Environment
    plan.json       the plan (the engine's format)
    shares.json     {"shares": [[[file, part], ...], ...]}: the parts of each array child, in plan order
    parts/, done/   staged part outputs, their records and the objects' completion markers (engine layout)

A child (``selfmaker transform-share --state URI``, its share from ``AWS_BATCH_JOB_ARRAY_INDEX``) runs its
parts with the engine's model plugin and part task on a LocalCluster of all its cores, then assembles every
object of its share whose parts are all recorded. Whichever child records an object's last part sees every
record (S3 lists are strongly consistent), and two children assembling the same object write the same bytes
atomically, so an ``.out`` is never partial nor duplicated. A re-submit plans only what has no output yet.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from batch import storage
from batch.errors import BatchError, InputError, RecordError
from batch.plan import JobPlan, done_uri, list_inputs, load_progress, make_plan, plan_uri
from batch.request import parse_request
from batch.settings import BatchSettings
from batch.transform import PartSpec

log = logging.getLogger(__name__)

JOB_FILE = "job.json"
SHARES_FILE = "shares.json"


def balance(sizes: Sequence[int], count: int) -> list[list[int]]:
    """Cut ``sizes`` (bytes of consecutive items) into at most ``count`` contiguous, non-empty groups of about
    equal bytes; returns the item indices of each group. Contiguous groups keep an object's byte ranges
    together where they fit in one share, so fewer objects need parts from two children.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if not sizes:
        return []
    total = sum(max(0, s) for s in sizes)
    groups: list[list[int]] = [[] for _ in range(min(count, len(sizes)))]
    n = len(groups)
    before = 0
    for index, size in enumerate(sizes):
        size = max(0, size)
        if total:
            # the item goes where its middle byte falls; the floor keeps the groups in order
            slot = min(n - 1, int((before + size / 2) * n // total))
        else:
            slot = min(n - 1, index * n // len(sizes))
        groups[slot].append(index)
        before += size
    return [g for g in groups if g]


@dataclass
class Prepared:
    """What a submission planned: the state prefix, the shares and what earlier runs already finished."""

    state: str
    shares: list[list[tuple[int, int]]]
    files_total: int
    files_done: int
    parts_total: int
    parts_done: int
    outputs: list[str] = field(default_factory=list)
    bytes_total: int = 0


def _pending(plan: JobPlan, state: str) -> tuple[list[PartSpec], list[int], set[int], int]:
    """(parts without a record, objects whose parts are all recorded but not yet assembled, finished objects,
    number of recorded parts)."""
    done_files, done_parts = load_progress(state)
    todo: list[PartSpec] = []
    assemble_only: list[int] = []
    recorded = 0
    for fplan in plan.files:
        if fplan.index in done_files:
            recorded += len(fplan.parts)
            continue
        missing = [p for p in fplan.parts if (p.file_index, p.part_index) not in done_parts]
        recorded += len(fplan.parts) - len(missing)
        if missing:
            todo.extend(missing)
        else:
            assemble_only.append(fplan.index)
    return todo, assemble_only, set(done_files), recorded


def prepare(
    request: dict[str, Any],
    *,
    model: str,
    model_environment: dict[str, str],
    state: str,
    children: int,
    part_bytes: int,
    cores_per_child: int,
) -> Prepared:
    """Validate the request, plan the job and write the state prefix for ``children`` array children.

    A plan stored by an earlier submission of the same request over the same input is kept, and only the
    parts (and assemblies) without a result are shared out. Raises
    :class:`~batch.errors.TransformRequestError` for a bad request, :class:`~batch.errors.InputError`
    when the input has no objects.
    """
    spec = parse_request(request)
    infos = list_inputs(spec)
    plan = make_plan(spec, infos, part_bytes=part_bytes, workers=max(1, children * cores_per_child))
    stored = plan_uri(state)
    if storage.exists(stored):
        previous = JobPlan.from_json(storage.read_bytes(stored))
        if previous.fingerprint == plan.fingerprint:
            plan = previous
        else:
            log.warning("state at %s belongs to another request or input; starting afresh", state)
            for sub in ("parts", "done"):
                storage.delete_prefix(storage.join_uri(state, sub))
    todo, assemble_only, done, recorded = _pending(plan, state)
    groups = balance([p.size for p in todo], children)
    shares: list[list[tuple[int, int]]] = [
        [(todo[i].file_index, todo[i].part_index) for i in g] for g in groups
    ]
    for file_index in assemble_only:
        # all its parts are recorded, only the assembly is missing (a child died between the two)
        first = plan.files[file_index].parts[0]
        if not shares:
            shares.append([])
        shares[0].append((first.file_index, first.part_index))
    storage.put_bytes(
        storage.join_uri(state, JOB_FILE),
        orjson.dumps({"request": request, "model": model, "environment": dict(model_environment)}),
    )
    storage.put_bytes(stored, plan.to_json())
    storage.put_bytes(
        storage.join_uri(state, SHARES_FILE),
        orjson.dumps({"shares": [[list(item) for item in share] for share in shares]}),
    )
    return Prepared(
        state=state,
        shares=shares,
        files_total=len(plan.files),
        files_done=len(done),
        parts_total=len(plan.parts),
        parts_done=recorded,
        outputs=[f.out_uri for f in plan.files],
        bytes_total=sum(f.info.size for f in plan.files),
    )


def recorded_records(state: str) -> tuple[int, int]:
    """(records, finished objects) recorded under ``state`` so far (for a submitter's progress bar)."""
    done_files, done_parts = load_progress(state)
    counted = {key for key in done_parts if key[0] not in done_files}
    records = sum(int(c.get("records", 0)) for c in done_files.values())
    records += sum(int(done_parts[key].get("records", 0)) for key in counted)
    return records, len(done_files)


@dataclass
class ShareResult:
    """How one child's share ended."""

    index: int
    parts: int = 0
    parts_skipped: int = 0
    records: int = 0
    objects_written: list[str] = field(default_factory=list)
    elapsed: float = 0.0


def _run_parts(
    parts: list[PartSpec],
    spec: Any,
    model: str,
    model_env: dict[str, str],
    state: str,
    settings: BatchSettings,
    result: ShareResult,
) -> None:
    """Transform ``parts`` on a LocalCluster of this machine's cores with the engine's plugin and task."""
    from distributed import Client, LocalCluster, as_completed

    from batch.engine import _with_s3_endpoint, model_environment
    from batch.worker import ModelPlugin, run_part, worker_info

    name = f"selfmaker-share-{spec.job_name}-{result.index}"
    workers = min(settings.effective_workers(), len(parts))
    # one worker needs no process of its own: it shares this one (no second interpreter, no second import)
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=workers > 1,
        dashboard_address="127.0.0.1:0",
        silence_logs=logging.WARNING,
    )
    client = Client(cluster)
    try:
        mode = "url" if model.startswith(("http://", "https://")) else settings.mode
        plugin = ModelPlugin(
            name,
            model,
            mode=mode,
            env=_with_s3_endpoint(model_environment(spec, model_env), settings.s3_endpoint_url),
            timeout=spec.timeout_s,
            retries=spec.max_retries,
            python=settings.python,
            startup_timeout=settings.startup_timeout,
            s3_endpoint=settings.s3_endpoint_url,
        )
        try:
            client.register_plugin(plugin, name=name)
        except BatchError:
            raise
        except Exception as exc:  # noqa: BLE001 - plugin setup errors come back re-raised by distributed
            raise BatchError(f"the model could not be started on the workers: {exc}") from None
        info = next(iter(client.run(worker_info, name).values()))
        spec = spec.with_execution_parameters(info["execution_parameters"]).resolved()
        futures = [
            client.submit(
                run_part,
                spec,
                part,
                name,
                state,
                f"{name}-progress",
                pure=False,
                key=f"part-{name}-{part.file_index}-{part.part_index}",
            )
            for part in parts
        ]
        failure: BaseException | None = None
        for future in as_completed(futures):
            if future.status == "finished":
                counts = future.result()
                result.parts += 1
                result.records += int(counts.get("records", 0))
                continue
            if future.status == "cancelled":
                continue
            if failure is None:
                failure = future.exception()
                for other in futures:
                    other.cancel()
        if failure is not None:
            if isinstance(failure, RecordError):
                raise BatchError(failure.reason())
            if isinstance(failure, BatchError):
                raise failure
            raise BatchError(f"internal error: {type(failure).__name__}: {failure}")
    finally:
        client.close()
        cluster.close()


def _assemble_ready(plan: JobPlan, state: str, files: Sequence[int], result: ShareResult) -> None:
    """Assemble each of ``files`` whose parts are all recorded and that has no completion marker yet."""
    from batch.worker import assemble, part_record_uri, part_uri

    done_files, done_parts = load_progress(state)
    for file_index in sorted(set(files)):
        fplan = plan.files[file_index]
        if file_index in done_files:
            continue
        if any((p.file_index, p.part_index) not in done_parts for p in fplan.parts):
            continue  # another child still runs a part of it and will assemble it
        if len(fplan.parts) == 1:
            # the engine's single-part assembly moves the staged part: copied, a racing re-run still finds it
            writer = storage.open_writer(fplan.out_uri)
            try:
                for chunk in storage.iter_chunks(part_uri(state, fplan.parts[0]), storage.S3_PART_BYTES):
                    writer.write(chunk)
            except BaseException:
                writer.abort()
                raise
            writer.commit()
        else:
            assemble([part_uri(state, p) for p in fplan.parts], fplan.out_uri)
        totals = {"records": 0, "bytes_in": 0, "bytes_out": 0}
        for part in fplan.parts:
            counts = orjson.loads(storage.read_bytes(part_record_uri(state, part)))
            for key in totals:
                totals[key] += int(counts.get(key, 0))
        storage.put_bytes(done_uri(state, file_index), orjson.dumps(totals))
        result.objects_written.append(fplan.out_uri)
        log.info("wrote %s", fplan.out_uri)


def run_share(state: str, index: int, settings: BatchSettings | None = None) -> ShareResult:
    """Run share ``index`` of the job whose state prefix is ``state``; raises :class:`BatchError` on
    failure."""
    settings = settings or BatchSettings()
    if settings.s3_endpoint_url:
        storage.configure_s3(settings.s3_endpoint_url)
    started = time.monotonic()
    try:
        job = orjson.loads(storage.read_bytes(storage.join_uri(state, JOB_FILE)))
        plan = JobPlan.from_json(storage.read_bytes(plan_uri(state)))
        shares = orjson.loads(storage.read_bytes(storage.join_uri(state, SHARES_FILE)))["shares"]
    except (InputError, orjson.JSONDecodeError, KeyError) as exc:
        raise BatchError(f"the job state at {state} is missing or unreadable: {exc}") from None
    if not 0 <= index < len(shares):
        raise BatchError(f"share {index} does not exist: the job at {state} has {len(shares)} shares")
    spec = parse_request(job["request"])
    mine = [(int(f), int(p)) for f, p in shares[index]]
    result = ShareResult(index=index)
    _, done_parts = load_progress(state)
    done_files = {f for f in {f for f, _ in mine} if storage.exists(done_uri(state, f))}
    todo = [plan.files[f].parts[p] for f, p in mine if f not in done_files and (f, p) not in done_parts]
    result.parts_skipped = len(mine) - len(todo)
    if todo:
        _run_parts(todo, spec, str(job["model"]), dict(job.get("environment") or {}), state, settings, result)
    _assemble_ready(plan, state, [f for f, _ in mine], result)
    result.elapsed = time.monotonic() - started
    return result


def main(argv: list[str] | None = None) -> int:
    """``selfmaker transform-share --state URI [--index N]``: run one share of an AWS Batch transform job.

    The index defaults to ``AWS_BATCH_JOB_ARRAY_INDEX`` (0 for a job of one share, which Batch runs as a
    plain job). Exit 0 when the share's parts are written, 1 on failure (the reason on stderr).
    """
    parser = argparse.ArgumentParser(
        prog="selfmaker transform-share", description=(main.__doc__ or "").split("\n")[0]
    )
    parser.add_argument(
        "--state", required=True, help="the job's state prefix (s3://...) written by the submitter"
    )
    parser.add_argument(
        "--index", type=int, default=None, help="share index (default $AWS_BATCH_JOB_ARRAY_INDEX or 0)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("distributed").setLevel(logging.WARNING)
    index = args.index if args.index is not None else int(os.environ.get("AWS_BATCH_JOB_ARRAY_INDEX") or 0)
    try:
        result = run_share(args.state, index)
    except BatchError as exc:
        print(f"selfmaker transform-share: share {index} failed: {exc}", file=sys.stderr, flush=True)
        return 1
    rate = result.records / result.elapsed if result.elapsed > 0 else 0.0
    print(
        f"share {index}: {result.parts} parts run, {result.parts_skipped} already done, "
        f"{result.records:,} records "
        f"({rate:,.0f} records/s), {len(result.objects_written)} objects written in {result.elapsed:.1f} s",
        flush=True,
    )
    for uri in result.objects_written:
        print(f"  {uri}", flush=True)
    return 0
