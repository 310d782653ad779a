"""What operations, runtime routes and feature hooks get as ``platform``: the platform's parts, built and
wired by the composition root (:mod:`selfmaker.platform`), which nothing else imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from selfmaker.alarms import Alarms
from selfmaker.api.registry import Registry
from selfmaker.arns import make_arn
from selfmaker.endpoints.manager import EndpointManager
from selfmaker.endpoints.runtime import FeatureState
from selfmaker.endpoints.stats import InvocationStats
from selfmaker.executors import Executors
from selfmaker.jobs.monitoring import MonitoringManager
from selfmaker.jobs.processing import ProcessingJobs
from selfmaker.jobs.training import TrainingManager
from selfmaker.jobs.transform import TransformJobs
from selfmaker.jobs.tuning import TuningManager
from selfmaker.logstreams import LogStreams
from selfmaker.metricstore import MetricStore
from selfmaker.settings import PlatformSettings
from selfmaker.state import StateStore


@dataclass
class Services:
    """The parts of a running ``selfmaker up``."""

    settings: PlatformSettings
    store: StateStore
    registry: Registry
    executors: Executors
    endpoints: EndpointManager
    training: TrainingManager
    transforms: TransformJobs
    tuning: TuningManager
    processing: ProcessingJobs
    #: Model Monitor: schedules, data-quality job definitions, executions (processing jobs)
    monitoring: MonitoringManager
    #: the CloudWatch Logs view of the log files (``Logs_20140328.*`` on the control plane's port)
    logs: LogStreams
    #: metric series (CloudWatch's GetMetricStatistics/GetMetricData read them): minute rollups, points
    metrics: MetricStore
    #: invocation counters, latency histograms and the 1-second ring of every endpoint variant
    invocation_stats: InvocationStats
    #: CloudWatch metric alarms (PutMetricAlarm …), evaluated on the metric store
    alarms: Alarms
    #: per-platform state of features, one object per type (a capture writer, the async supervisor …)
    features: FeatureState = field(default_factory=FeatureState)

    def arn(self, kind: str, name: str) -> str:
        """The ARN of resource ``name`` of ``kind`` in this platform's region and account."""
        return make_arn(self.settings.region, self.settings.account_id, kind, name)
