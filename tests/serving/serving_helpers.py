"""Helpers shared by the model-server tests (imported by tests/serving/conftest.py and test modules)."""

from __future__ import annotations

import io
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Server:
    """A running ``python -m serving`` subprocess."""

    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None


def wait_for_log(server: Server, needle: str, timeout: float = 10.0) -> str:
    """Poll the server log until it contains ``needle`` (bounded); return the log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = server.log()
        if needle in text:
            return text
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} not in the server log after {timeout}s:\n{server.log()}")


def tar_dir(model_dir: Path, archive: Path) -> Path:
    """``model.tar.gz`` with the model dir's files at the archive root (as SageMaker packs it)."""
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(model_dir.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(model_dir)), recursive=False)
    return archive


def add_member(
    tar: tarfile.TarFile, name: str, *, data: bytes = b"x", kind: bytes = tarfile.REGTYPE, link: str = ""
) -> None:
    """Add one crafted member (file, symlink, hard link, device, FIFO) to an open archive."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)
