"""A training job inside AWS Batch: one node of a (single- or multi-node) job runs its SageMaker host.

The submitter (``selfmaker train REQUEST.json --aws-batch QUEUE``) stores the CreateTrainingJob request at
``<state>/request.json``; every node runs ``selfmaker train-node --state URI``. Node ``i`` of ``n``
(``AWS_BATCH_JOB_NODE_INDEX`` / ``AWS_BATCH_JOB_NUM_NODES``; a single-node job has neither) is SageMaker's
host ``algo-<i+1>``: its ``resourceconfig.json`` lists ``algo-1 … algo-n`` and ``algo-1`` is reached at the
main node's address (``AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS`` on the other nodes, this machine's
own address on the main node), so distributed xgboost finds its tracker as it does locally. Checkpoints
in ``CheckpointConfig.S3Uri`` are restored when the node starts, so a retried attempt (a reclaimed spot
instance) resumes from the last one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from training.storage import Storage, StorageError, join

#: the port of xgboost's tracker on the main node (the job's security group lets nodes talk on any port)
DEFAULT_TRACKER_PORT = 9099


@dataclass(frozen=True)
class NodeIdentity:
    """Which SageMaker host this Batch node is and how it reaches ``algo-1``."""

    index: int
    count: int
    main_address: str

    @property
    def host(self) -> str:
        """SageMaker's name of this node's host."""
        return f"algo-{self.index + 1}"


def own_address() -> str:
    """This machine's primary IPv4 address (the interface a packet to the VPC would leave by)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the route
            return str(sock.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def node_identity(env: Mapping[str, str]) -> NodeIdentity:
    """This node's place in the job from the environment AWS Batch sets (``SELFMAKER_NODE_ADDRESS``
    overrides the main node's own address)."""
    index = int(env.get("AWS_BATCH_JOB_NODE_INDEX") or 0)
    count = int(env.get("AWS_BATCH_JOB_NUM_NODES") or 1)
    if not 0 <= index < count:
        raise ValueError(f"AWS_BATCH_JOB_NODE_INDEX {index} is outside 0..{count - 1}")
    main_index = int(env.get("AWS_BATCH_JOB_MAIN_NODE_INDEX") or 0)
    if index == main_index:
        main = env.get("SELFMAKER_NODE_ADDRESS") or own_address()
    else:
        main = env.get("AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS") or ""
        if not main:
            raise ValueError("AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS is not set on a non-main node")
    return NodeIdentity(index=index, count=count, main_address=main)


def main(argv: list[str] | None = None) -> int:
    """``selfmaker train-node --state URI``: run this AWS Batch node's host of a training job.

    Exit 0 when the job completed, 1 when it failed or stopped (the reason on stderr), 2 for a bad setup.
    """
    parser = argparse.ArgumentParser(
        prog="selfmaker train-node", description=(main.__doc__ or "").split("\n")[0]
    )
    parser.add_argument(
        "--state", required=True, help="the job's state prefix (s3://...) holding request.json"
    )
    parser.add_argument(
        "--work-dir",
        default=os.environ.get("SELFMAKER_WORK_DIR") or "/tmp/selfmaker-job",
        help="where the /opt/ml tree is built (default $SELFMAKER_WORK_DIR or /tmp/selfmaker-job)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from training.runner import TrainingJobRunner

    storage = Storage(None)
    try:
        request = json.loads(storage.read_bytes(join(args.state, "request.json")))
        node = node_identity(os.environ)
    except (StorageError, ValueError) as exc:
        print(f"selfmaker train-node: {exc}", file=sys.stderr)
        return 2
    wanted = int((request.get("ResourceConfig") or {}).get("InstanceCount") or 1)
    if wanted != node.count:
        print(
            f"selfmaker train-node: the request asks for {wanted} instances but the job has "
            f"{node.count} nodes",
            file=sys.stderr,
        )
        return 2
    job = str(request.get("TrainingJobName") or "training-job")
    interval = float(os.environ.get("SELFMAKER_CHECKPOINT_SYNC_SECONDS") or 10)
    tracker = int(os.environ.get("SELFMAKER_TRACKER_PORT") or DEFAULT_TRACKER_PORT)
    print(
        f"[{job}] node {node.index + 1}/{node.count} runs {node.host}; algo-1 at {node.main_address}",
        flush=True,
    )

    def on_log(host: str, line: str) -> None:
        print(f"{host} | {line}", flush=True)

    runner = TrainingJobRunner(
        request,
        Path(args.work_dir) / job,
        on_log=on_log,
        storage=storage,
        checkpoint_sync_interval=interval,
        local_hosts=[node.host],
        host_addresses={"algo-1": node.main_address},
        tracker_port=tracker,
        # the job's timeout is Batch's (MaxRuntime became attemptDurationSeconds); SIGTERM comes from it
        stop_grace_seconds=float(os.environ.get("SELFMAKER_STOP_GRACE_SECONDS") or 120),
    )
    state = runner.run()
    print(f"[{job}] {node.host}: {state.status}", flush=True)
    if state.model_artifacts:
        print(f"[{job}] model: {state.model_artifacts}", flush=True)
    if state.failure_reason:
        print(f"[{job}] failure: {state.failure_reason}", file=sys.stderr, flush=True)
    return 0 if state.status == "Completed" else 1
