"""Executors start model servers for endpoint variants: local processes or containers.

See :mod:`selfmaker.executors.base` for the interface.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from selfmaker.executors.base import Executor, ExecutorError, InstanceHandle, InstanceSpec
from selfmaker.executors.process import ProcessExecutor

if TYPE_CHECKING:
    from selfmaker.settings import PlatformSettings

__all__ = [
    "Executor",
    "ExecutorError",
    "Executors",
    "InstanceHandle",
    "InstanceSpec",
    "executor_kind_for_image",
    "image_repository",
    "load_executor",
]

_REGISTRY_CHARS = (".", ":")


def image_repository(image: str) -> str:
    """The repository name of an image reference: last path component without tag or digest.

    ``683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1`` → ``sagemaker-xgboost``;
    ``localhost:5000/team/selfmaker@sha256:…`` → ``selfmaker``.
    """
    ref = image.strip().split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    return last.split(":", 1)[0].lower()


def executor_kind_for_image(image: str | None, process_images: list[str] | tuple[str, ...] = ()) -> str:
    """``"process"`` for selfmaker's own image (``selfmaker``, ``selfmaker-*``, or no image) and the
    built-in algorithm images named in ``process_images``; ``"container"`` for everything else."""
    if not image or not image.strip():
        return "process"
    repo = image_repository(image)
    if (
        repo == "selfmaker"
        or repo.startswith("selfmaker-")
        or repo in {name.lower() for name in process_images}
    ):
        return "process"
    return "container"


def load_executor(kind: str, settings: PlatformSettings) -> Executor:
    """Create the executor for ``kind``: ``process`` is built in; ``container`` comes from
    ``selfmaker.executors.container.ContainerExecutor(settings)`` when that module exists."""
    if kind == "process":
        return ProcessExecutor(settings)
    if kind == "container":
        try:  # imported by name: a build without the container executor still serves process images
            module = importlib.import_module("selfmaker.executors.container")
        except ModuleNotFoundError as exc:
            if exc.name != "selfmaker.executors.container":
                raise
            raise ExecutorError("container images are not supported by this selfmaker build") from exc
        return module.ContainerExecutor(settings)
    raise ExecutorError(f"unknown executor kind {kind!r}")


class Executors:
    """The platform's executors by kind, each created on first use."""

    def __init__(self, settings: PlatformSettings) -> None:
        self.settings = settings
        self._by_kind: dict[str, Executor] = {}

    def for_image(self, image: str | None) -> Executor:
        """The executor that runs ``image`` (created on first use)."""
        kind = executor_kind_for_image(image, self.settings.process_images)
        executor = self._by_kind.get(kind)
        if executor is None:
            executor = self._by_kind[kind] = load_executor(kind, self.settings)
        return executor

    def install(self, kind: str, executor: Executor) -> None:
        """Make ``executor`` the one for ``kind`` (e.g. the serverless feature's fork executor)."""
        self._by_kind[kind] = executor

    async def close(self) -> None:
        """Close every executor that was created."""
        for executor in self._by_kind.values():
            await executor.close()
