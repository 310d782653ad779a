"""Platform settings, read once by the entry point and passed down."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class PlatformSettings(BaseSettings):
    """Settings of `selfmaker up` (environment prefix ``SELFMAKER_``; CLI flags override)."""

    model_config = SettingsConfigDict(env_prefix="SELFMAKER_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".selfmaker")
    host: str = "127.0.0.1"
    port: int = Field(default=7070, ge=0, le=65535)
    region: str = "us-east-1"
    account_id: str = Field(default="123456789012", pattern=r"^\d{12}$")
    #: seconds a new model server may take to answer GET /ping with 200 (a variant's
    #: ContainerStartupHealthCheckTimeoutInSeconds overrides it)
    startup_timeout: float = 120.0
    #: seconds an instance being removed may keep finishing in-flight requests before it is stopped
    drain_timeout: float = 60.0
    #: seconds between SIGTERM and SIGKILL when a model server is stopped
    stop_grace: float = 10.0
    #: seconds between SIGTERM and SIGKILL when a training or processing job is stopped (SageMaker: 120)
    training_stop_grace: float = 120.0
    #: seconds between two uploads of a processing job's S3Outputs in Continuous mode
    processing_upload_interval: float = Field(default=5.0, gt=0)
    #: seconds the router waits for a model server's answer (SageMaker: 60 s)
    invocation_timeout: float = 60.0
    #: largest accepted invocation body in bytes (SageMaker: 6 MB)
    max_payload_bytes: int = 6 * 1024 * 1024
    #: most runtime requests one endpoint may have in flight (reading their body, queued at or served by
    #: its model servers); one more gets ThrottlingException (429) at once instead of queueing without bound
    endpoint_queue_limit: int = Field(default=1000, ge=1)
    #: image repository names (last path component, no tag) run as local processes, besides selfmaker*
    process_images: list[str] = Field(
        default_factory=lambda: [
            "xgboost",
            "sagemaker-xgboost",
            "linear-learner",
            "sagemaker-linear-learner",
            "kmeans",
            "factorization-machines",
            "pca",
            "sagemaker-model-monitor-analyzer",  # Model Monitor: selfmaker's analyzer (docs/monitoring.md)
        ]  # fmt: skip
    )
    #: Model Monitor (docs/monitoring.md): a monitoring schedule also runs one execution as soon as it is
    #: created or started, over the hour before, instead of waiting for its first cron tick (tests, demos)
    monitoring_run_now: bool = False
    #: seconds between two looks of the monitoring clock for schedules whose cron tick has come
    monitoring_check_interval: float = Field(default=30.0, gt=0)
    #: most instances one production variant, training job or transform job may ask for: each is a
    #: process (or container) on this machine, so a typo such as 1000 must not start a thousand
    #: (SageMaker's account quotas answer ResourceLimitExceeded the same way)
    max_instances: int = Field(default=16, ge=1)
    #: gunicorn workers per model server process (SAGEMAKER_MODEL_SERVER_WORKERS), unless the model sets it
    model_server_workers: int = 1
    #: python interpreter that runs model servers and training (default: the one running selfmaker)
    python: str | None = None
    #: test knob: a managed spot training job (EnableManagedSpotTraining) is interrupted once after this many
    #: seconds of Training, as a spot reclaim would, and restarts from its checkpoints (unset: never)
    spot_interrupt_after: float | None = Field(default=None, gt=0)
    #: serve without checking signatures even with keys or on a non-loopback address (warned at every start)
    no_auth: bool = False
    #: seconds a web console sign-in lasts (the session cookie's lifetime)
    console_session_seconds: float = Field(default=12 * 3600, gt=0)
    #: PEM certificate chain and private key: serve HTTPS (TLS 1.2+) instead of HTTP; both or neither
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: a log file (platform, model server, job) larger than this many bytes is rotated; 0: never
    log_max_bytes: int = Field(default=50 * 1024 * 1024, ge=0)
    #: rotated files kept per log (``name.log.1`` … ``name.log.N``, the highest the oldest)
    log_backups: int = Field(default=5, ge=0, le=100)
    #: seconds between looks at the sizes of the model-server and job logs
    log_check_interval: float = Field(default=10.0, gt=0)
    #: directories ``file://`` locations (model data, channels, outputs, checkpoints) must stay inside,
    #: separated by ``:`` (empty: anywhere but the system directories of selfmaker.paths)
    file_roots: str = ""
    #: more names the ``Host`` header may carry besides the address served and the loopback names,
    #: comma-separated (``name`` or ``name:port``; ``*`` turns the check off), e.g. a reverse proxy's name
    allowed_hosts: str = ""
    #: count every runtime request in the endpoint metrics (CloudWatch's AWS/SageMaker namespace); off,
    #: endpoints have no invocation metrics (``python -m bench metricstore`` measures what they cost)
    endpoint_metrics: bool = True
    #: days the metric store keeps its 1-minute data and training metric values (CloudWatch: 15 days)
    metrics_retention_days: float = Field(default=15.0, gt=0)
    #: seconds between two evaluations of the CloudWatch alarms (PutMetricAlarm)
    alarm_evaluation_interval: float = Field(default=10.0, gt=0)
    #: the most bytes a model archive may unpack to (default: 100 times its size, at least 1 GiB)
    max_unpacked_bytes: int | None = Field(default=None, gt=0)

    @property
    def file_root_paths(self) -> tuple[Path, ...]:
        """The parsed ``file_roots`` (resolved, absolute)."""
        return tuple(Path(part).resolve() for part in self.file_roots.split(":") if part.strip())

    @property
    def allowed_host_names(self) -> frozenset[str]:
        """The parsed ``allowed_hosts`` (lower-cased)."""
        return frozenset(part.strip().lower() for part in self.allowed_hosts.split(",") if part.strip())

    @property
    def db_path(self) -> Path:
        return self.home / "state.db"

    @property
    def metrics_db_path(self) -> Path:
        """The metric store's database (:mod:`selfmaker.metricstore`), beside the state store's."""
        return self.home / "metrics.db"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def work_dir(self) -> Path:
        return self.home / "work"
