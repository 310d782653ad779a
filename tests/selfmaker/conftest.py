"""Fixtures of the platform tests (helpers in platform_helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from platform_helpers import PlatformProcess, build_broken_tar, build_classifier_tar, create_key, running


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
