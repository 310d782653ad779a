"""Helpers shared by the model-server tests (imported by tests/serving/conftest.py and test modules)."""

from __future__ import annotations

import io
import socket
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, *, timeout: float = 30.0, status: int = 200, alive: Callable[[], bool] | None = None) -> None:
    """Poll ``url`` until it answers ``status`` (bounded by ``timeout``; fails early if ``alive()`` is False)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise AssertionError(f"server behind {url} exited before it was ready ({last})")
        try:
            resp = requests.get(url, timeout=2)
            if resp.status_code == status:
                return
            last = f"HTTP {resp.status_code}: {resp.text[:200]}"
        except requests.RequestException as exc:
            last = repr(exc)
        time.sleep(0.05)
    raise AssertionError(f"{url} did not answer {status} after {timeout}s: {last}")


def tar_dir(model_dir: Path, archive: Path) -> Path:
    """``model.tar.gz`` with the model dir's files at the archive root (as SageMaker packs it)."""
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(model_dir.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(model_dir)), recursive=False)
    return archive


def add_member(tar: tarfile.TarFile, name: str, *, data: bytes = b"x", kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    """Add one crafted member (file, symlink, hard link, device, FIFO) to an open archive."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)
