"""Settings of the batch engine, read once by the entry point (environment prefix ``SELFMAKER_BATCH_``)."""

from __future__ import annotations

import os

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def machine_cores() -> int:
    """CPU cores this process may use (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class BatchSettings(BaseSettings):
    """How transform jobs run.

    ``scheduler``: address of an existing Dask scheduler (``tcp://host:8786``); unset = a LocalCluster
    with ``workers`` processes (default one per core), one thread each. ``part_mb``: size of the byte
    ranges large newline-delimited objects are split into. ``mode``: ``auto`` (selfmaker's own ONNX
    models in process, models with ``code/`` in model servers), ``http`` (always model servers),
    ``inprocess``. ``python``: interpreter of the model servers. ``startup_timeout``: seconds a model
    server may take to pass /ping. ``s3_endpoint_url``: S3 endpoint override (boto3 also honours
    ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``).
    """

    model_config = SettingsConfigDict(env_prefix="SELFMAKER_BATCH_", extra="ignore")

    scheduler: str | None = None
    workers: int | None = Field(None, ge=1, le=1024)
    part_mb: float = Field(32.0, gt=0)
    mode: str = Field("auto", pattern="^(auto|http|inprocess)$")
    python: str | None = None
    startup_timeout: float = Field(120.0, gt=0)
    s3_endpoint_url: str | None = None
    #: seconds a stopped job waits for running output assemblies before giving up on them
    stop_grace: float = Field(30.0, ge=0)

    def effective_workers(self) -> int:
        """LocalCluster worker processes: the setting, else one per core."""
        return self.workers or machine_cores()
