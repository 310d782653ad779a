"""Fixtures of the platform tests (helpers in platform_helpers.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sdkkit
from platform_helpers import (
    PlatformProcess,
    build_broken_tar,
    build_classifier_tar,
    create_key,
    moto_env,
    running,
)


@pytest.fixture(scope="session")
def platform_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformProcess]:
    """One `selfmaker up` shared by the tests of the session (tests use unique resource names)."""
    with running(tmp_path_factory.mktemp("selfmaker-home")) as server:
        yield server


@pytest.fixture(scope="session")
def keyed_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformProcess]:
    """A `selfmaker up` whose home holds an access key (made with `selfmaker keys create`): every call but
    /ping must be signed; its clients sign with that key. Logs rotate past 2 KiB (2 parts kept), looked at
    every 0.5 s."""
    home = tmp_path_factory.mktemp("selfmaker-keyed-home")
    key = create_key(home, "platform-tests")
    env = {
        "SELFMAKER_LOG_MAX_BYTES": "2048",
        "SELFMAKER_LOG_BACKUPS": "2",
        "SELFMAKER_LOG_CHECK_INTERVAL": "0.5",
    }
    with running(home, env=env, key=key) as server:
        yield server


@pytest.fixture(scope="session")
def sm(platform_server: PlatformProcess) -> Any:
    return platform_server.sagemaker()


@pytest.fixture(scope="session")
def smr(platform_server: PlatformProcess) -> Any:
    return platform_server.runtime()


@pytest.fixture(scope="session")
def onnx_model_tar(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``file://`` URI of a tiny logistic-regression model.tar.gz (4 float features)."""
    return build_classifier_tar(tmp_path_factory.mktemp("model")).as_uri()


@pytest.fixture(scope="session")
def broken_model_tar(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``file://`` URI of a model.tar.gz the model server cannot load."""
    return build_broken_tar(tmp_path_factory.mktemp("broken")).as_uri()


@pytest.fixture(scope="session")
def sdk_platform(tmp_path_factory: pytest.TempPathFactory, moto_server: str) -> Iterator[PlatformProcess]:
    """A `selfmaker up` whose S3 is the moto server: the SageMaker SDK's tests run against it."""
    with running(tmp_path_factory.mktemp("sdk-home"), env=moto_env(moto_server)) as server:
        yield server


@pytest.fixture
def run_sdk(sdk_platform: PlatformProcess, moto_server: str, tmp_path: Path) -> Callable[..., sdkkit.SdkRun]:
    """``run_sdk(script, **kw)``: :func:`sdkkit.run_sdk` against :func:`sdk_platform` and moto, in
    ``tmp_path`` (already checked: it fails the test unless the script exited 0)."""

    def run(script: str, **kwargs: Any) -> sdkkit.SdkRun:
        kwargs.setdefault("workdir", tmp_path / "sdk")
        return sdkkit.run_sdk(script, platform_url=sdk_platform.url, moto_url=moto_server, **kwargs).check()

    return run
