"""Fixtures of the container tests: a working engine (installed when missing), the shared Debian base,
the tiny BYOC test image and selfmaker's CPU image -- all built here, nothing pulled from a registry.

Every test here that needs an engine is marked ``container``. Those skip only when no engine works and
none can be installed (``scripts/install-engine.sh`` needs root and apt); they fail when an engine
exists but a build fails.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from containers_helpers import BYOC_IMAGE, SELFMAKER_AS_BYOC, SELFMAKER_IMAGE, run

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def one_worker_at_a_time() -> Iterator[None]:
    """Serialise engine installs and image builds across pytest-xdist workers (``make test`` runs two, and
    each has its own session fixtures): the second worker waits, then finds the base images built and the
    other layers cached."""
    with open(Path(tempfile.gettempdir()) / "selfmaker-container-tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test of this package that needs an engine (uses the ``engine`` fixture) ``container``."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents and "engine" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.container)


@pytest.fixture(scope="session")
def engine() -> str:
    """Path of a working docker/podman; installs podman via scripts/install-engine.sh when none works."""
    from training.executors.container import ContainerEngineError, detect_engine

    try:
        return detect_engine()
    except ContainerEngineError:
        pass
    with one_worker_at_a_time():
        install = subprocess.run(
            ["bash", str(ROOT / "scripts" / "install-engine.sh")],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    try:
        return detect_engine()
    except ContainerEngineError as exc:
        pytest.skip(
            f"no container engine works and none could be installed here ({exc}); "
            f"install-engine.sh said: {(install.stderr or install.stdout).strip()[-300:]}"
        )


@pytest.fixture(scope="session")
def build_env(engine: str) -> dict[str, str]:
    """Environment for scripts/build-images.sh: the same engine as the tests."""
    return {**os.environ, "SELFMAKER_CONTAINER_ENGINE": engine}


@pytest.fixture(scope="session")
def base_images(build_env: dict[str, str]) -> None:
    """localhost/selfmaker-base:bookworm (debootstrap) + localhost/selfmaker-python:bookworm (cached)."""
    with one_worker_at_a_time():
        run(["bash", str(ROOT / "scripts" / "build-images.sh"), "--base-only"], timeout=900, env=build_env)


@pytest.fixture(scope="session")
def byoc_image(engine: str, base_images: None) -> str:
    """The tiny flask BYOC image of tests/containers/byoc, on the shared base."""
    with one_worker_at_a_time():
        _build_byoc(engine)
    return BYOC_IMAGE


def _build_byoc(engine: str) -> None:
    run(
        [
            engine,
            "build",
            "--network",
            "host",
            "-q",
            "-t",
            BYOC_IMAGE,
            "--build-arg",
            "BASE_IMAGE=localhost/selfmaker-python:bookworm",
            str(Path(__file__).parent / "byoc"),
        ],
        timeout=600,
    )


@pytest.fixture(scope="session")
def selfmaker_image(engine: str, build_env: dict[str, str], base_images: None) -> str:
    """selfmaker's CPU image built by `scripts/build-images.sh --cpu` (debootstrap base + wheelhouse)."""
    with one_worker_at_a_time():
        run(
            ["bash", str(ROOT / "scripts" / "build-images.sh"), "--cpu", "--base", "debootstrap"],
            timeout=1500,
            env=build_env,
        )
        run([engine, "tag", SELFMAKER_IMAGE, SELFMAKER_AS_BYOC])
    return SELFMAKER_IMAGE


@pytest.fixture
def cleanup_containers(engine: str) -> Iterator[list[str]]:
    """Names/ids appended by a test are force-removed afterwards (containers this test started)."""
    started: list[str] = []
    try:
        yield started
    finally:
        for ref in started:
            subprocess.run([engine, "rm", "-f", ref], capture_output=True, check=False, timeout=60)
