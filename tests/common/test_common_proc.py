"""common.proc: free ports, the pip command line, container-engine detection (real executables on PATH)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from common.proc import (
    ENGINE_ENV,
    EngineError,
    PipUnavailableError,
    detect_engine,
    engine_name,
    free_port,
    pip_command,
)


@pytest.mark.parametrize("below", [None, 32768])
def test_free_port_can_be_bound(below: int | None) -> None:
    port = free_port(below=below)
    assert below is None or 20000 <= port < below
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_pip_command(tmp_path: Path) -> None:
    wheel = tmp_path / "pip-26.0-py3-none-any.whl"
    wheel.write_bytes(b"PK")
    assert pip_command(str(wheel), pip_installed=True) == [sys.executable, "-m", "pip"]
    assert pip_command(str(wheel), pip_installed=False) == [sys.executable, f"{wheel}/pip"]
    with pytest.raises(
        PipUnavailableError, match="code/requirements.txt needs pip.*SELFMAKER_PIP_WHEEL is not set"
    ):
        pip_command(None, pip_installed=False, needed_by="code/requirements.txt")
    with pytest.raises(PipUnavailableError, match="SELFMAKER_PIP_WHEEL=/nowhere.whl does not exist"):
        pip_command("/nowhere.whl", pip_installed=False)


def _engine(bin_dir: Path, name: str, works: bool) -> None:
    """An executable ``name`` whose ``info`` succeeds or fails (detection only runs ``<engine> info``)."""
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\nexit {0 if works else 1}\n")
    path.chmod(0o755)


@pytest.mark.parametrize(
    ("docker", "podman", "expected"),
    [
        (True, True, "docker"),
        (False, True, "podman"),
        (None, True, "podman"),
        (True, None, "docker"),
    ],
)
def test_docker_when_it_works_else_podman(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docker: bool | None, podman: bool | None, expected: str
) -> None:
    for name, works in (("docker", docker), ("podman", podman)):
        if works is not None:
            _engine(tmp_path, name, works)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv(ENGINE_ENV, raising=False)
    found = detect_engine()
    assert found == str(tmp_path / expected) and engine_name(found) == expected


def test_a_named_engine_must_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _engine(tmp_path, "docker", True)
    _engine(tmp_path, "podman", False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv(ENGINE_ENV, "podman")
    with pytest.raises(EngineError, match=r"'podman' \(SELFMAKER_CONTAINER_ENGINE\) does not work"):
        detect_engine()
    assert detect_engine("docker") == str(tmp_path / "docker"), "an explicit override wins over the variable"
    monkeypatch.delenv(ENGINE_ENV)
    (tmp_path / "docker").unlink()
    with pytest.raises(EngineError, match="none works here"):
        detect_engine()
