"""``python -m training.standby [--preload KIND]``: a training interpreter started ahead of its job.

A warm pool (``ResourceConfig.KeepAlivePeriodInSeconds``) keeps one per host: it imports the training
runtime and, for a built-in, the built-in's heavy libraries (xgboost, pyarrow, onnxruntime), then blocks
on stdin. The platform claims it by writing one JSON line ``{"env": {...}, "cwd": "...", "args": [...]}``;
it sets that environment and directory and runs ``python -m training <args>`` in this process, so the job
starts without paying for the interpreter and the imports. EOF on stdin (the pool expired) exits 0.
Nothing is printed before the claim: the output belongs to the job that claims it.
"""

from __future__ import annotations

import json
import os
import sys


def _preload(kind: str) -> None:
    # the imports are the point of this process: done before any job asks for them
    import training.trainer  # noqa: F401 - imported for its cost, ahead of the job

    if kind == "xgboost":
        from training.algorithms import xgboost_algo

        xgboost_algo.preload()
    elif kind == "linear-learner":
        import onnxruntime  # noqa: F401 - imported for its cost, ahead of the job
        import pyarrow.csv  # noqa: F401 - imported for its cost, ahead of the job

        from training.algorithms import linear_learner  # noqa: F401 - imported for its cost
    elif kind == "script":
        from training import script_mode  # noqa: F401 - imported for its cost, ahead of the job


def main(argv: list[str]) -> int:
    """Preload, wait for the claim, run the job's host; the job's exit code."""
    kind = argv[argv.index("--preload") + 1] if "--preload" in argv[:-1] else "script"
    _preload(kind)
    line = sys.stdin.readline()
    if not line.strip():
        return 0  # released unused
    claim = json.loads(line)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the job reads no stdin, as a cold host started with stdin=DEVNULL
    os.close(devnull)
    os.environ.update({str(k): str(v) for k, v in claim["env"].items()})
    os.chdir(claim["cwd"])
    args = [str(a) for a in claim["args"]]
    sys.argv = ["python -m training", *args]
    # the same entry a cold host runs (python -m training), imported here: the preload did the heavy part
    from training.__main__ import main as training_main

    return training_main(args)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
