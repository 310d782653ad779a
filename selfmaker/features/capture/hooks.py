"""Data capture inside ``selfmaker up`` (registered in :mod:`selfmaker.features.capture`).

One :class:`~selfmaker.features.capture.writer.CaptureWriter` per platform; every deployment of an
endpoint config with ``DataCaptureConfig`` gets an observer that samples answered production requests
and queues their capture record (built on the writer thread). Shadow copies are captured under the
shadow variant's name by :mod:`selfmaker.features.shadow.hooks` through :func:`capture`.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from selfmaker.api.metrics import Metrics, family
from selfmaker.errors import ValidationException
from selfmaker.features.capture.writer import (
    CapturePolicy,
    CaptureWriter,
    capture_record,
    validate_data_capture_config,
)

if TYPE_CHECKING:
    from selfmaker.endpoints.runtime import EndpointRuntime, InvocationRecord
    from selfmaker.services import Services


def writer(platform: Services) -> CaptureWriter:
    """The platform's capture writer (created on first use)."""
    return platform.features.setdefault(CaptureWriter, CaptureWriter)


def check_config(platform: Services, params: dict[str, Any]) -> set[str] | None:
    """Validate and claim ``DataCaptureConfig``."""
    config = params.get("DataCaptureConfig")
    if not config:
        return None
    problems = validate_data_capture_config(config, "dataCaptureConfig")
    if problems:
        raise ValidationException(
            f"{len(problems)} validation error{'s' if len(problems) > 1 else ''} detected: "
            + "; ".join(problems)
        )
    return {"DataCaptureConfig"}


def capture(
    platform: Services,
    runtime: EndpointRuntime,
    variant: str,
    record: InvocationRecord,
    *,
    response_body: bytes | None,
    response_content_type: str | None,
) -> bool:
    """Queue a capture of one answered request to ``variant`` if the endpoint captures and samples it."""
    policy = runtime.state.get(CapturePolicy)
    if policy is None or not policy.sampled():
        return False
    started = record.started
    body, content_type, inference_id = record.body, record.content_type, record.inference_id

    def build() -> dict[str, Any]:
        return capture_record(
            policy,
            input_body=body,
            input_content_type=content_type,
            output_body=response_body,
            output_content_type=response_content_type,
            inference_time=datetime.fromtimestamp(started, tz=timezone.utc),
            event_id=str(uuid.uuid4()),
            inference_id=inference_id,
        )

    return writer(platform).submit(
        policy, runtime.name, variant, build, when=datetime.fromtimestamp(started, tz=timezone.utc)
    )


def attach(platform: Services, runtime: EndpointRuntime, config: dict[str, Any]) -> None:
    """Capture sampled production requests of deployments whose config has ``DataCaptureConfig``."""
    settings = config.get("DataCaptureConfig")
    if not settings:
        return
    policy = CapturePolicy.from_request(settings)
    if not policy.enabled:
        return
    runtime.state.put(policy)

    def observe(record: InvocationRecord) -> None:
        if record.variant_name:
            capture(
                platform,
                runtime,
                record.variant_name,
                record,
                response_body=record.response_body,
                response_content_type=record.response_content_type,
            )

    runtime.observers.append(observe)


async def start(platform: Services) -> None:
    """Start the writer thread."""
    writer(platform).start()


async def stop(platform: Services) -> None:
    """Write what is queued, then stop the writer thread."""
    current = platform.features.get(CaptureWriter)
    if current is not None:
        await asyncio.to_thread(current.close, 10.0)


def metrics(platform: Services) -> Metrics:
    """The writer's counters (platform-wide: no per-endpoint values)."""
    found = Metrics("Capture")
    current = platform.features.get(CaptureWriter)
    if current is not None:
        stats = current.stats
        for metric, help_ in (
            ("submitted", "Capture records queued."),
            ("written", "Capture records written."),
            ("dropped", "Capture records dropped (queue full)."),
            ("failed", "Capture records lost to write errors."),
            ("objects", "Capture files written."),
        ):
            family(
                found.lines,
                f"selfmaker_capture_{metric}_total",
                "counter",
                help_,
                [({}, getattr(stats, metric))],
            )
    return found
