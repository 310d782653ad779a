"""Processes: a free port for a child server, the pip command line, the container engine.

Container engine rule (also scripts/build-images.sh's): ``$SELFMAKER_CONTAINER_ENGINE`` (``docker``,
``podman`` or a path) names one explicitly and must work; otherwise docker when its daemon answers, else
podman. "Works" means ``<engine> info`` succeeds.
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

#: the environment variable that names the container engine
ENGINE_ENV = "SELFMAKER_CONTAINER_ENGINE"
#: engines tried in this order when none is named: docker only counts when its daemon answers
ENGINE_CANDIDATES = ("docker", "podman")
#: seconds ``<engine> info`` may take before the engine counts as not working
ENGINE_INFO_TIMEOUT = 30.0
#: the setting that names pip's wheel for interpreters without a pip module (selfmaker's image)
PIP_WHEEL_ENV = "SELFMAKER_PIP_WHEEL"


class PipUnavailableError(Exception):
    """This interpreter has no pip module and no usable pip wheel (the message says how to fix it)."""


class EngineError(Exception):
    """No working container engine, or the named one does not work (the message is user-facing)."""


def free_port(host: str = "127.0.0.1", *, below: int | None = None) -> int:
    """A TCP port on ``host`` that was free a moment ago (the caller binds it soon after).

    ``below``: a port in ``[20000, below)`` (some servers, e.g. MMS, refuse ports >= 32768).
    """
    if below is None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            return int(sock.getsockname()[1])
    for _ in range(200):
        port = random.randrange(20000, below)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port below {below} on {host}")


def pip_command(
    pip_wheel: str | None, *, pip_installed: bool | None = None, needed_by: str = "requirements.txt"
) -> list[str]:
    """The command that runs pip for this interpreter: ``-m pip`` when pip is installed, else pip
    from its wheel.

    ``pip_installed`` defaults to whether this interpreter can import pip. selfmaker's image has no pip
    module but ships pip's wheel (``$SELFMAKER_PIP_WHEEL``), and pip runs from a wheel as
    ``python <wheel>/pip``. Raises :class:`PipUnavailableError` when neither is available; ``needed_by``
    names what needs pip in its message.
    """
    python = sys.executable
    if pip_installed is None:
        pip_installed = importlib.util.find_spec("pip") is not None
    if pip_installed:
        return [python, "-m", "pip"]
    if pip_wheel and Path(pip_wheel).is_file():
        return [python, f"{pip_wheel}/pip"]
    why = f"{PIP_WHEEL_ENV}={pip_wheel} does not exist" if pip_wheel else f"{PIP_WHEEL_ENV} is not set"
    raise PipUnavailableError(
        f"{needed_by} needs pip, which is not available: {python} has no pip module and "
        f"{why}. Install pip into that environment or set {PIP_WHEEL_ENV} to a pip wheel "
        "(pip-*.whl)"
    )


def engine_works(engine: str, timeout: float = ENGINE_INFO_TIMEOUT) -> bool:
    """Whether ``<engine> info`` succeeds (for docker: the client reaches a daemon)."""
    path = shutil.which(engine)
    if path is None:
        return False
    try:
        return (
            subprocess.run(
                [path, "info"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=timeout,
                check=False,
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def detect_engine(override: str | None = None) -> str:
    """The path of the container engine to use (see the module's rule).

    ``override`` wins over ``$SELFMAKER_CONTAINER_ENGINE``. Raises :class:`EngineError` (``make engine`` /
    ``scripts/install-engine.sh`` installs podman).
    """
    named = override or os.environ.get(ENGINE_ENV) or None
    if named:
        if engine_works(named):
            return str(shutil.which(named))
        raise EngineError(
            f"the container engine {named!r} ({ENGINE_ENV}) does not work ('{named} info' fails)"
        )
    for candidate in ENGINE_CANDIDATES:
        if engine_works(candidate):
            return str(shutil.which(candidate))
    raise EngineError(
        "this image needs a container engine and none works here "
        "(docker with a running daemon, or podman; `make engine` installs podman)"
    )


def engine_name(engine: str) -> str:
    """``docker`` or ``podman`` (the basename of the engine path)."""
    return Path(engine).name


_NETWORK_NAMESPACE: list[str] | None = None


def network_namespace_command() -> list[str]:
    """The ``unshare`` prefix that runs a command in a network namespace of its own (no interface but a
    loopback that is down: no connection anywhere, not even to the host's 127.0.0.1), or ``[]`` when
    this machine allows none (probed once: root gets ``--net``, others a user namespace too)."""
    global _NETWORK_NAMESPACE
    if _NETWORK_NAMESPACE is None:
        _NETWORK_NAMESPACE = []
        if shutil.which("unshare") is not None:
            options = (["--net"], ["--user", "--map-root-user", "--net"])
            for option in options if os.geteuid() == 0 else options[1:]:
                try:
                    probe = subprocess.run(
                        ["unshare", *option, "true"],
                        stdin=subprocess.DEVNULL,
                        capture_output=True,
                        timeout=30,
                        check=False,
                    )
                except (OSError, subprocess.TimeoutExpired):
                    continue
                if probe.returncode == 0:
                    _NETWORK_NAMESPACE = ["unshare", *option]
                    break
    return list(_NETWORK_NAMESPACE)
