"""Helpers shared by the built-in algorithms: previous model lookup, checkpoint files, metric lines."""

from __future__ import annotations

import os
import tarfile
import tempfile
from pathlib import Path

from training.environment import TrainingEnvironment
from training.errors import UserError


def previous_model_file(env: TrainingEnvironment, names: tuple[str, ...]) -> bytes | None:
    """The file named one of ``names`` from the ``model`` channel (a model.tar.gz or the plain file)."""
    if "model" not in env.input_data_config:
        return None
    base = env.channel_dir("model")
    if env.input_mode("model") == "Pipe":
        raise UserError("channel 'model' must use File input mode")
    files = [p for p in sorted(base.rglob("*")) if p.is_file()] if base.exists() else []
    if not files:
        raise UserError("channel 'model' is empty (expected a model.tar.gz from a previous job)")
    for path in files:
        if path.name in names:
            return path.read_bytes()
        if tarfile.is_tarfile(path):
            with tarfile.open(path) as tar:
                for member in tar.getmembers():
                    if member.isfile() and Path(member.name).name in names:
                        fh = tar.extractfile(member)
                        if fh is not None:
                            return fh.read()
    raise UserError(f"channel 'model': no {' or '.join(names)} found in {', '.join(p.name for p in files)}")


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory (checkpoints are synced live)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def numbered_files(directory: Path, prefix: str) -> list[tuple[int, Path]]:
    """``prefix<N>`` files in ``directory`` sorted by N."""
    out = []
    if directory.is_dir():
        for p in directory.iterdir():
            if p.name.startswith(prefix) and p.name[len(prefix) :].isdigit():
                out.append((int(p.name[len(prefix) :]), p))
    return sorted(out)
