"""Settings of serverless variants and the parsed ``ServerlessConfig`` of one variant."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic_settings import BaseSettings, SettingsConfigDict


class ServerlessSettings(BaseSettings):
    """Platform-wide knobs of serverless variants (environment prefix ``SELFMAKER_SERVERLESS_``).

    Read once by ``selfmaker up`` and passed down.
    """

    model_config = SettingsConfigDict(env_prefix="SELFMAKER_SERVERLESS_", extra="ignore")

    #: seconds an instance may sit without requests before it is stopped (scale to zero)
    idle_timeout: float = 300.0
    #: requests in flight on one instance before the variant starts another one
    instance_concurrency: int = 8
    #: most instances of one serverless variant (one machine: more processes than cores buys nothing)
    max_instances: int = 2
    #: fork model servers from the pre-imported template process (False: plain ``python -m serving``)
    use_template: bool = True
    #: also fork the instances of ordinary (instance-based) process variants from the template
    fork_all_process_variants: bool = False
    #: largest request body of a serverless variant (SageMaker: 4 MB)
    max_payload_bytes: int = 4 * 1024 * 1024
    #: seconds a cold start may take before the waiting requests fail
    cold_start_timeout: float = 120.0
    #: seconds a serverless endpoint's deployment waits for the template to be ready before InService
    template_wait: float = 60.0


@dataclass(frozen=True)
class ServerlessConfig:
    """``ProductionVariant.ServerlessConfig`` of one variant."""

    memory_mb: int
    max_concurrency: int
    provisioned_concurrency: int = 0

    @classmethod
    def from_request(cls, config: dict[str, Any]) -> ServerlessConfig:
        """Parse the botocore shape (already validated by the control plane)."""
        return cls(
            memory_mb=int(config["MemorySizeInMB"]),
            max_concurrency=int(config["MaxConcurrency"]),
            provisioned_concurrency=int(config.get("ProvisionedConcurrency") or 0),
        )

    def warm_instances(self, settings: ServerlessSettings) -> int:
        """Instances kept running even when idle: enough for ``ProvisionedConcurrency``."""
        if self.provisioned_concurrency <= 0:
            return 0
        return min(
            settings.max_instances,
            math.ceil(self.provisioned_concurrency / max(1, settings.instance_concurrency)),
        )

    def to_response(self) -> dict[str, Any]:
        """The botocore shape (DescribeEndpoint Current/DesiredServerlessConfig)."""
        out: dict[str, Any] = {"MemorySizeInMB": self.memory_mb, "MaxConcurrency": self.max_concurrency}
        if self.provisioned_concurrency:
            out["ProvisionedConcurrency"] = self.provisioned_concurrency
        return out


#: the values SageMaker accepts for MemorySizeInMB
MEMORY_SIZES_MB = (1024, 2048, 3072, 4096, 5120, 6144)


def validate_serverless_config(config: Any, member: str) -> list[str]:
    """Problems with a ``ServerlessConfig`` request member (empty when valid), naming ``member``."""
    if not isinstance(config, dict):
        return [f"{member} must be a structure"]
    problems: list[str] = []
    memory = config.get("MemorySizeInMB")
    if not isinstance(memory, int) or memory not in MEMORY_SIZES_MB:
        problems.append(
            f"Value '{memory}' at '{member}.memorySizeInMB' failed to satisfy constraint: "
            f"Member must be one of {list(MEMORY_SIZES_MB)}"
        )
    max_concurrency = config.get("MaxConcurrency")
    if not isinstance(max_concurrency, int) or not 1 <= max_concurrency <= 200:
        problems.append(
            f"Value '{max_concurrency}' at '{member}.maxConcurrency' failed to satisfy constraint: "
            "Member must have value between 1 and 200"
        )
    provisioned = config.get("ProvisionedConcurrency")
    if provisioned is not None:
        if not isinstance(provisioned, int) or not 1 <= provisioned <= 200:
            problems.append(
                f"Value '{provisioned}' at '{member}.provisionedConcurrency' failed to satisfy constraint: "
                "Member must have value between 1 and 200"
            )
        elif isinstance(max_concurrency, int) and provisioned > max_concurrency:
            problems.append(
                f"{member}.ProvisionedConcurrency ({provisioned}) must not exceed MaxConcurrency "
                f"({max_concurrency})"
            )
    return problems
