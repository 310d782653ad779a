"""User mistakes on the `selfmaker up` / `selfmaker logs` command line: one clear line and exit code 2,
never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "selfmaker", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (
            ["--port", "99999"],
            {},
            "invalid port (--port or SELFMAKER_PORT): Input should be less than or equal to 65535",
        ),
        ([], {"SELFMAKER_PORT": "abc"}, "invalid port (--port or SELFMAKER_PORT)"),
        (["--account-id", "12"], {}, "invalid account_id (--account-id or SELFMAKER_ACCOUNT_ID)"),
        ([], {"SELFMAKER_ACCOUNT_ID": "123"}, "invalid account_id"),
    ],
)
def test_up_rejects_bad_settings(tmp_path: Path, args: list[str], env: dict[str, str], message: str) -> None:
    proc = run("up", "--home", str(tmp_path / "home"), *args, env=env)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_up_says_when_it_cannot_use_the_home_or_the_address(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    proc = run("up", "--home", str(tmp_path / "file" / "home"), "--port", "0")
    assert proc.returncode == 2 and "cannot use" in proc.stderr and "as the home directory" in proc.stderr
    assert "Traceback" not in proc.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run("up", "--home", str(tmp_path / "home"), "--host", "127.0.0.1", "--port", str(port))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (
        f"selfmaker up: cannot listen on 127.0.0.1:{port}" in proc.stderr
        and "address already in use" in proc.stderr
    )
    assert "Traceback" not in proc.stderr


def test_logs_rejects_a_negative_tail(tmp_path: Path) -> None:
    proc = run("logs", "anything", "--home", str(tmp_path), "--tail", "-2")
    assert proc.returncode == 2 and "--tail must be 0" in proc.stderr


def test_version_and_a_missing_training_root(tmp_path: Path) -> None:
    from importlib.metadata import version

    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"selfmaker {version('selfmaker')}"
    proc = run("train", "--root", str(tmp_path / "nowhere"))
    assert proc.returncode == 2 and "no such directory" in proc.stderr
    assert not (tmp_path / "nowhere").exists()  # nothing created at a mistyped path
