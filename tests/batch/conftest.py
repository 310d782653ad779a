"""Fixtures of the batch-engine tests: tiny models built at test time, data files, a shared Dask cluster.

Dask clusters are slow to start, so most tests share one session-scoped LocalCluster with in-process
(thread) workers; the tests that need real worker processes start their own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from batch_helpers import build_hooks_model, build_lr_model


@pytest.fixture(scope="session")
def lr_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lr_model(tmp_path_factory.mktemp("lr") / "model")


@pytest.fixture(scope="session")
def hooks_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_hooks_model(tmp_path_factory.mktemp("hooks") / "model")


@pytest.fixture(scope="session")
def dask_client() -> Iterator[Any]:
    """A shared LocalCluster with two in-process workers (one thread each)."""
    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.WARNING)
    # tcp (not inproc) so other processes (the CLI, `selfmaker up`) can use its scheduler too
    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=False,
        protocol="tcp://",
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.fixture
def run_job(dask_client: Any) -> Callable[..., Any]:
    """``run_job(request, model, **kwargs)`` on the shared cluster."""
    from batch.engine import run_transform
    from batch.settings import BatchSettings

    def run(
        req: dict[str, Any], model: Path | str, *, part_mb: float = 32.0, mode: str = "auto", **kwargs: Any
    ) -> Any:
        settings = BatchSettings(part_mb=part_mb, mode=mode, startup_timeout=60)
        return run_transform(
            req, model_dir=str(model), client=kwargs.pop("client", dask_client), settings=settings, **kwargs
        )

    return run
