"""The `selfmaker` command line.

Each sub-command lives in the package that owns it and is imported only when it runs, so
`selfmaker serve` inside a serving container never imports the platform or the batch engine.
Every target is a ``main(argv: list[str]) -> int`` function.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib.metadata import PackageNotFoundError, version

#: sub-command -> ("module:function", one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("serving.cli:main", "run the model server (SageMaker inference container contract)"),
    "train": ("training.cli:train_main", "run a training job inside a container (/opt/ml contract)"),
    "train-local": ("training.cli:train_local_main", "run one CreateTrainingJob request locally"),
    "up": ("selfmaker.commands.up:main", "run the SageMaker-compatible API on one port"),
    "status": ("selfmaker.commands.status:main", "show endpoints, variants, instances and jobs"),
    "logs": ("selfmaker.commands.logs:main", "print the logs of an endpoint or job"),
    "keys": ("selfmaker.commands.keys:main", "create, list and delete the access keys `up` accepts"),
    "transform": ("batch.cli:main", "run one CreateTransformJob request on Dask"),
    "train-node": ("training.awsbatch:main", "run one node of a training job (inside an AWS Batch job)"),
    "transform-share": (
        "batch.awsbatch:main",
        "run one share of a transform array job (inside an AWS Batch job)",
    ),
}
#: commands whose ``--aws-batch`` form submits to / reads from AWS Batch (selfmaker.commands.aws_batch)
AWS_BATCH: dict[str, str] = {
    "train": "selfmaker.commands.aws_batch:train_main",
    "transform": "selfmaker.commands.aws_batch:transform_main",
    "logs": "selfmaker.commands.aws_batch:logs_main",
    "status": "selfmaker.commands.aws_batch:status_main",
}

#: the line a local command's ``--help`` ends with, pointing at its ``--aws-batch`` form
AWS_BATCH_HELP: dict[str, str] = {
    "train": "selfmaker train REQUEST.json --aws-batch QUEUE: run a CreateTrainingJob request on AWS Batch",
    "transform": (
        "selfmaker transform REQUEST.json --aws-batch QUEUE: run a CreateTransformJob request on AWS Batch"
    ),
    "logs": "selfmaker logs JOB_ID --aws-batch: the CloudWatch log streams of an AWS Batch job",
    "status": "selfmaker status --aws-batch QUEUE: running and recent jobs of an AWS Batch queue",
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: selfmaker COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += [
        "",
        "train, transform, logs and status take --aws-batch to run on / read from an AWS Batch queue.",
    ]
    lines += [
        "",
        "Run `selfmaker COMMAND --help` for the options of a command, `selfmaker --version` for the version.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch to the sub-command named by the first argument."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if not args or args[0] in {"-h", "--help", "help"}:
            print(_usage())
            return 0
        if args[0] in {"-V", "--version", "version"}:
            try:
                print(f"selfmaker {version('selfmaker')}")
            except PackageNotFoundError:  # run from a source tree that is not installed
                print("selfmaker (not installed)")
            return 0
        name, rest = args[0], args[1:]
        if name not in COMMANDS:
            print(f"selfmaker: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
            return 2
        target, _ = COMMANDS[name]
        if name in AWS_BATCH and any(a == "--aws-batch" or a.startswith("--aws-batch=") for a in rest):
            target = AWS_BATCH[name]
        module_name, func_name = target.split(":")
        func = getattr(importlib.import_module(module_name), func_name)
        if name in AWS_BATCH and target != AWS_BATCH[name] and any(a in {"-h", "--help"} for a in rest):
            try:
                return int(func(rest) or 0)
            finally:  # argparse exits after the help; the --aws-batch form is not in the local parser's text
                flag = "--aws-batch" if name == "logs" else "--aws-batch QUEUE"
                print(f"\n{AWS_BATCH_HELP[name]}\n(`selfmaker {name} {flag} --help` for its options)")
        return int(func(rest) or 0)
    except BrokenPipeError:  # `selfmaker ... | head`: the reader left, nothing is wrong
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout at exit
        return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
