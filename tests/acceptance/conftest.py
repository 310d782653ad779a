"""The acceptance tests drive a real `selfmaker up` with the platform tests' helpers
(``tests/selfmaker/platform_helpers.py``): make them importable as ``platform_helpers``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_PLATFORM_TESTS = str(Path(__file__).resolve().parents[1] / "selfmaker")
if _PLATFORM_TESTS not in sys.path:
    sys.path.insert(0, _PLATFORM_TESTS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test of this package ``slow``: each module starts a real platform (``selfmaker up``),
    so ``make test-fast`` (``-m "not slow and not container"``) leaves them out."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A `selfmaker up` with default settings and its own home, for the module (modules that need
    other settings define their own ``platform``)."""
    import platform_helpers as helpers

    with helpers.running(tmp_path_factory.mktemp("home")) as server:
        yield server


@pytest.fixture(scope="module")
def sm(platform: Any) -> Any:
    """boto3 ``sagemaker`` client of the module's ``platform`` fixture."""
    return platform.sagemaker()


@pytest.fixture(scope="module")
def smr(platform: Any) -> Any:
    """boto3 ``sagemaker-runtime`` client of the module's ``platform`` fixture."""
    return platform.runtime()
