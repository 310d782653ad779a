"""Script mode: run the user's ``sagemaker_program`` from ``sagemaker_submit_directory`` like
sagemaker-training.

The submit directory (a ``.tar.gz`` at an ``s3://`` / ``file://`` URI or path, or a directory) is
unpacked into ``<root>/code``; ``requirements.txt`` is installed with pip; the program runs in that
directory with the user hyperparameters as ``--name value`` arguments and the ``SM_*`` environment.
"""

from __future__ import annotations

import collections
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from common import archives, uris
from common import proc as common_proc
from training.environment import NETWORK_ISOLATION_ENV, TrainingEnvironment, say
from training.errors import HyperparameterError, UserError

#: the process currently running the user script (SIGTERM is forwarded to it)
_current: subprocess.Popen[bytes] | None = None


def to_cmd_args(hps: dict[str, Any]) -> list[str]:
    """User hyperparameters → ``--key value`` pairs sorted by key (``-k`` for 1-char keys, dicts as
    ``k=v,…``)."""
    args: list[str] = []
    for key in sorted(hps):
        value = hps[key]
        if isinstance(value, dict):
            value = ",".join(f"{k}={v}" for k, v in sorted(value.items()))
        args += [f"-{key}" if len(key) == 1 else f"--{key}", str(value)]
    return args


def fetch_submit_dir(uri: str, code_dir: Path) -> None:
    """Unpack/copy the submit directory into ``code_dir``."""
    code_dir.mkdir(parents=True, exist_ok=True)
    if uri.startswith("s3://"):
        from training.storage import Storage, StorageError

        with tempfile.TemporaryDirectory() as tmp:
            dest = Path(tmp) / "sourcedir.tar.gz"
            try:
                Storage().download(uri, dest)
            except StorageError as exc:
                raise UserError(f"sagemaker_submit_directory: {exc}") from exc
            _extract(dest, code_dir, uri)
        return
    try:
        path = uris.local_path(uri)
    except uris.UriError as exc:
        raise UserError(f"sagemaker_submit_directory: {exc}") from exc
    if path.is_dir():
        shutil.copytree(path, code_dir, dirs_exist_ok=True)
    elif path.is_file():
        _extract(path, code_dir, uri)
    else:
        raise UserError(f"sagemaker_submit_directory: {uri} does not exist")


#: set by the runner for a job of a warm pool: where the unpacked submit directory of this exact archive
#: (URI + version) is kept between the pool's jobs
SUBMIT_CACHE_ENV = "SELFMAKER_SUBMIT_CACHE"


def fetch_cached_submit_dir(uri: str, code_dir: Path, cache: str | None) -> None:
    """:func:`fetch_submit_dir`, or a copy of the tree a previous job of the warm pool unpacked from the same
    archive (kept at ``cache`` after the first unpacking; best effort: a failed copy costs a download)."""
    kept = Path(cache) if cache else None
    if kept is not None and kept.is_dir():
        shutil.copytree(kept, code_dir, dirs_exist_ok=True)
        say(f"Using the submit directory {uri} unpacked by a previous job of the warm pool")
        return
    fetch_submit_dir(uri, code_dir)
    if kept is not None:
        tmp = kept.with_name(kept.name + ".partial")
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(code_dir, tmp)
            os.replace(tmp, kept)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)


def _extract(archive: Path, code_dir: Path, uri: str) -> None:
    try:
        archives.safe_extract(archive, code_dir, what="code directory")
    except archives.ArchiveError as exc:
        raise UserError(f"sagemaker_submit_directory: {uri} is not a safe, readable tar.gz: {exc}") from exc


def pip_command(pip_wheel: str | None, *, pip_installed: bool | None = None) -> list[str]:
    """:func:`common.proc.pip_command` for ``requirements.txt``; :class:`UserError` without pip."""
    try:
        return common_proc.pip_command(pip_wheel, pip_installed=pip_installed, needed_by="requirements.txt")
    except common_proc.PipUnavailableError as exc:
        raise UserError(f"InstallRequirementsError: {exc}") from exc


def install_requirements(code_dir: Path, pip_wheel: str | None = None) -> None:
    """``pip install -r requirements.txt`` when the submit directory has one (pip: :func:`pip_command`)."""
    req = code_dir / "requirements.txt"
    if not req.is_file():
        return
    cmd = [*pip_command(pip_wheel), "install", "--disable-pip-version-check", "-r", str(req)]
    say(f"Installing requirements: {shlex.join(cmd)}")
    proc = subprocess.run(cmd, cwd=code_dir, capture_output=True, text=True, check=False)
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        raise UserError(
            "InstallRequirementsError: pip install -r requirements.txt failed (exit "
            f"{proc.returncode}): {proc.stderr.strip()[-700:]}"
        )


def forward_signal(signum: int, _frame: Any) -> None:
    """Forward SIGTERM to the running user script so it can save its model."""
    proc = _current
    if proc is not None and proc.poll() is None:
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            pass


def run(env: TrainingEnvironment) -> int:
    """Run the user script; returns its exit code and writes the toolkit's failure message on error."""
    global _current
    hps = env.hyperparameters
    program = hps.get("sagemaker_program")
    if not program or not isinstance(program, str):
        raise HyperparameterError(
            "sagemaker_program", "is required in script mode (the entry point file name)"
        )
    submit = hps.get("sagemaker_submit_directory")
    code_dir = env.code_dir
    if submit:
        fetch_cached_submit_dir(
            host_location(str(submit), env.root), code_dir, os.environ.get(SUBMIT_CACHE_ENV) or None
        )
    script = code_dir / program
    if not script.is_file():
        raise HyperparameterError(
            "sagemaker_program", f"{program!r} not found in the submit directory {submit or code_dir}"
        )
    install_requirements(code_dir, env.pip_wheel)

    user_args = to_cmd_args(env.user_hyperparameters)
    module_name = program[:-3] if program.endswith(".py") else program
    child_env = dict(os.environ)
    child_env.update(
        env.sm_env(
            module_name=module_name,
            user_entry_point=program,
            module_dir=str(submit or code_dir),
            user_args=user_args,
        )
    )
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(code_dir), child_env.get("PYTHONPATH", "")) if p
    )
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    if program.endswith(".py"):
        cmd = [sys.executable, "--", program, *user_args]
    else:
        script.chmod(script.stat().st_mode | 0o111)
        cmd = ["/bin/sh", "-c", shlex.join([f"./{program}", *user_args])]
    say(f"Invoking user script: {shlex.join(cmd)}")
    if os.environ.get(NETWORK_ISOLATION_ENV) == "1":
        cmd = _isolated(cmd, env)

    tail: collections.deque[str] = collections.deque(maxlen=40)
    previous = signal.signal(signal.SIGTERM, forward_signal)
    try:
        proc = subprocess.Popen(
            cmd, cwd=code_dir, env=child_env, stdin=subprocess.DEVNULL, stdout=None, stderr=subprocess.PIPE
        )
        _current = proc
        assert proc.stderr is not None

        def pump() -> None:
            assert proc.stderr is not None
            for raw in iter(proc.stderr.readline, b""):
                sys.stderr.buffer.write(raw)
                sys.stderr.buffer.flush()
                tail.append(raw.decode("utf-8", "replace"))

        pumper = threading.Thread(target=pump, daemon=True)
        pumper.start()
        code = proc.wait()
        pumper.join(timeout=10)
    finally:
        _current = None
        signal.signal(signal.SIGTERM, previous)
    if code != 0:
        message = "".join(tail).strip()
        write_failure(
            env,
            f'ExecuteUserScriptError:\nExitCode {code}\nErrorMessage "{message}"\n'
            f'Command "{shlex.join(cmd)}"',
        )
        return 1 if code > 0 else 128 - code
    return 0


def host_location(location: str, root: Path) -> str:
    """``location`` with a leading ``/opt/ml/`` pointing into this host's tree ``root`` (a local process's
    /opt/ml is a directory of the job; in a container ``root`` is /opt/ml itself). Under network isolation
    the SageMaker SDK passes the code as the ``code`` channel: ``/opt/ml/input/data/code/sourcedir.tar.gz``.
    """
    prefix = "/opt/ml/"
    if location.startswith(prefix):
        return str(root / location[len(prefix) :])
    return location


def _isolated(cmd: list[str], env: TrainingEnvironment) -> list[str]:
    """``cmd`` in a network namespace of its own (EnableNetworkIsolation), where this host allows one.

    One host only: the hosts of a local multi-host job reach each other on the host's loopback, which a
    namespace per host would cut (SageMaker keeps traffic between a job's instances under isolation);
    containers get ``--network none`` or an internal network from the container executor instead.
    """
    if len(env.hosts) > 1:
        say("Network isolation: the hosts of a local multi-host job share the host's loopback (not isolated)")
        return cmd
    prefix = common_proc.network_namespace_command()
    if not prefix:
        say("Network isolation: this host gives no network namespace (unshare --net failed); not isolated")
        return cmd
    say("Network isolation: the script runs in a network namespace of its own (no network at all)")
    return [*prefix, *cmd]


def write_failure(env: TrainingEnvironment, text: str) -> None:
    """Write ``output/failure`` unless the user's code already wrote one (the toolkit never overwrites it)."""
    path = env.failure_file
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size > 0:
        return
    path.write_text(text, encoding="utf-8")
