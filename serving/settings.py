"""Model-server settings, read once at start-up from the SageMaker environment names.

Every field has a short Python name and an alias that is the environment variable SageMaker (or
selfmaker) uses; :class:`ServingSettings` is built once by the entry point and passed down, so no
request handler ever reads ``os.environ``.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Files whose presence means "this process runs inside a container".
CONTAINER_MARKERS = ("/.dockerenv", "/run/.containerenv")
DEFAULT_MODEL_DIR = "/opt/ml/model"
#: SageMaker's EndpointName / VariantName pattern
SAGEMAKER_NAME_PATTERN = r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$"


class ServingSettings(BaseSettings):
    """The model server's configuration (environment aliases in parentheses).

    ``port`` (SAGEMAKER_BIND_TO_PORT), ``workers`` (SAGEMAKER_MODEL_SERVER_WORKERS, default one per
    core), ``timeout`` (SAGEMAKER_MODEL_SERVER_TIMEOUT, seconds per request), ``max_payload_mb``
    (SAGEMAKER_MAX_PAYLOAD_IN_MB, 1..1024), ``program`` (SAGEMAKER_PROGRAM, the hooks module in
    ``code/``), ``default_accept`` (SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT), ``pip_wheel``
    (SELFMAKER_PIP_WHEEL, pip's wheel for ``code/requirements.txt`` when the interpreter has no pip),
    ``batching`` (SELFMAKER_SERVE_BATCHING, see :class:`serving.http.fastpath.PendingInvocation`),
    ``endpoint_name`` / ``variant_name`` (SELFMAKER_ENDPOINT_NAME / SELFMAKER_VARIANT_NAME, set by the
    instance's user data behind the gateway: see :mod:`serving.http.fastpath`'s runtime path).
    """

    model_config = SettingsConfigDict(validate_by_name=True, validate_by_alias=True, extra="ignore")

    port: int = Field(8080, alias="SAGEMAKER_BIND_TO_PORT", ge=0, le=65535)
    host: str | None = Field(None, alias="SELFMAKER_SERVE_HOST")
    workers: int | None = Field(None, alias="SAGEMAKER_MODEL_SERVER_WORKERS", ge=1, le=256)
    timeout: int = Field(60, alias="SAGEMAKER_MODEL_SERVER_TIMEOUT", ge=1)
    max_payload_mb: int = Field(6, alias="SAGEMAKER_MAX_PAYLOAD_IN_MB", ge=1, le=1024)
    program: str | None = Field(None, alias="SAGEMAKER_PROGRAM")
    #: a framework model's code as an s3:// / file:// URI (what the SDK sets when it does not repack)
    submit_directory: str | None = Field(None, alias="SAGEMAKER_SUBMIT_DIRECTORY")
    default_accept: str = Field("application/json", alias="SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT")
    max_concurrent_transforms: int | None = Field(None, alias="SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", ge=1)
    batch_strategy: str = Field("MULTI_RECORD", alias="SAGEMAKER_BATCH_STRATEGY")
    model_dir: str = Field(DEFAULT_MODEL_DIR, alias="SELFMAKER_MODEL_DIR")
    model_data: str | None = Field(None, alias="SELFMAKER_MODEL_DATA")
    in_container: bool | None = Field(None, alias="SELFMAKER_IN_CONTAINER")
    worker_class: str = Field(
        "inline", alias="SELFMAKER_SERVE_WORKER_CLASS", pattern="^(inline|gthread|sync)$"
    )
    threads: int = Field(4, alias="SELFMAKER_SERVE_THREADS", ge=1, le=256)
    #: seconds a request may take to arrive whole from its first byte (the ``inline`` worker buffers
    #: requests in its poller, so a client that drips its headers or body holds no other connection up)
    read_timeout: float = Field(30.0, alias="SELFMAKER_SERVE_READ_TIMEOUT", gt=0, le=3600)
    ort_threads: int | None = Field(None, alias="SELFMAKER_ORT_THREADS", ge=1)
    use_gpu: bool | None = Field(None, alias="SELFMAKER_USE_GPU")
    install_requirements: bool = Field(True, alias="SELFMAKER_INSTALL_REQUIREMENTS")
    #: pip wheel that installs code/requirements.txt when this interpreter has no pip (set by the image)
    pip_wheel: str | None = Field(None, alias="SELFMAKER_PIP_WHEEL")
    #: install code/requirements.txt into this directory (pip --target) instead of the environment:
    #: where the environment is read-only (AWS Lambda); the directory must be on sys.path
    pip_target: str | None = Field(None, alias="SELFMAKER_PIP_TARGET")
    log_level: str = Field("INFO", alias="SELFMAKER_LOG_LEVEL")
    access_log: bool = Field(True, alias="SELFMAKER_ACCESS_LOG")
    #: answer small invocations that arrive together with one model run (inline worker, default handler)
    batching: bool = Field(True, alias="SELFMAKER_SERVE_BATCHING")
    state_dir: str | None = Field(None, alias="SELFMAKER_SERVE_STATE_DIR")
    #: the most bytes a ``--model-data`` archive may unpack to (default: common.archives.unpack_limit's
    #: rule, 100 times its size and at least 1 GiB); the platform's setting of the same name
    max_unpacked_bytes: int | None = Field(None, alias="SELFMAKER_MAX_UNPACKED_BYTES", gt=0)
    #: stop (gracefully) when this process stops being our parent: set by a supervisor such as
    #: `selfmaker up`, so a killed supervisor leaves no model server behind
    parent_pid: int | None = Field(None, alias="SELFMAKER_PARENT_PID", ge=1)
    #: behind the gateway (`pulumi up`): the endpoint this server answers ``POST
    #: /endpoints/<name>/invocations`` for (any name when unset) and the production variant it reports in
    #: x-Amzn-Invoked-Production-Variant
    endpoint_name: str | None = Field(None, alias="SELFMAKER_ENDPOINT_NAME", pattern=SAGEMAKER_NAME_PATTERN)
    variant_name: str = Field("AllTraffic", alias="SELFMAKER_VARIANT_NAME", pattern=SAGEMAKER_NAME_PATTERN)

    # -- derived values -------------------------------------------------------------------------

    def cores(self) -> int:
        """CPU cores this process may use (affinity-aware)."""
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover - not Linux
            return max(1, os.cpu_count() or 1)

    def effective_workers(self) -> int:
        """Worker processes: the setting, else one per core."""
        return self.workers or self.cores()

    def effective_ort_threads(self) -> int:
        """ONNX Runtime intra-op threads per worker so that workers x threads = cores."""
        if self.ort_threads:
            return self.ort_threads
        return max(1, self.cores() // self.effective_workers())

    def effective_host(self) -> str:
        """Bind address: the setting, else 0.0.0.0 inside a container and 127.0.0.1 outside."""
        if self.host:
            return self.host
        inside = self.in_container
        if inside is None:
            inside = any(Path(marker).exists() for marker in CONTAINER_MARKERS)
        return "0.0.0.0" if inside else "127.0.0.1"

    def max_payload_bytes(self) -> int:
        """The request-body limit in bytes."""
        return self.max_payload_mb * 1024 * 1024

    def effective_max_concurrent_transforms(self) -> int:
        """MaxConcurrentTransforms advertised by /execution-parameters: the setting, else the workers."""
        return self.max_concurrent_transforms or self.effective_workers()
