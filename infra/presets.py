"""Instance-type presets for CPU and GPU groups and the on-demand/spot capacity mix (pure)."""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Families we know carry NVIDIA GPUs (the seeds' G4dn, G5, P3 plus their neighbours).
GPU_FAMILIES: frozenset[str] = frozenset({"g4dn", "g5", "g6", "g6e", "p3", "p3dn", "p4d", "p5"})

#: Named presets; the first type is the preferred one (the launch template default when a group has a
#: warm pool and therefore a single type).
CPU_PRESETS: dict[str, tuple[str, ...]] = {
    "cpu-small": ("c5.large", "c6i.large", "m5.large"),
    "cpu-medium": ("c5.xlarge", "c6i.xlarge", "m5.xlarge"),
    "cpu-large": ("c5.2xlarge", "c6i.2xlarge", "m5.2xlarge"),
    "cpu-xlarge": ("c5.4xlarge", "c6i.4xlarge", "m5.4xlarge"),
}
GPU_PRESETS: dict[str, tuple[str, ...]] = {
    "gpu-small": ("g4dn.xlarge", "g5.xlarge"),
    "gpu-medium": ("g4dn.2xlarge", "g5.2xlarge"),
    "gpu-large": ("g5.12xlarge", "g4dn.12xlarge"),
    "gpu-train": ("p3.2xlarge", "g5.2xlarge", "g4dn.2xlarge"),
    "gpu-train-multi": ("p3.8xlarge", "g5.12xlarge", "g4dn.12xlarge"),
}
PRESETS: dict[str, tuple[str, ...]] = {**CPU_PRESETS, **GPU_PRESETS}

ACCELERATORS = ("cpu", "gpu")


def instance_family(instance_type: str) -> str:
    """``g4dn.xlarge`` → ``g4dn``; raises ``ValueError`` on a malformed type."""
    family, sep, size = instance_type.partition(".")
    if not sep or not family or not size or not family.isalnum() or not size.isalnum():
        raise ValueError(f"{instance_type!r} is not an EC2 instance type (family.size)")
    return family.lower()


def is_gpu_type(instance_type: str) -> bool:
    """Whether ``instance_type`` belongs to a GPU family."""
    return instance_family(instance_type) in GPU_FAMILIES


def resolve_instance_types(
    accelerator: str, preset: str | None, instance_types: list[str] | None
) -> tuple[str, ...]:
    """The instance types of a group: an explicit list wins over a preset; defaults to the small preset.

    Every type must match the group's accelerator, because CPU and GPU groups boot different AMIs.
    Raises ``ValueError`` naming the offending type or preset.
    """
    if accelerator not in ACCELERATORS:
        raise ValueError(f"accelerator must be one of {ACCELERATORS}, not {accelerator!r}")
    if instance_types:
        types = tuple(instance_types)
    else:
        name = preset or f"{accelerator}-small"
        table = GPU_PRESETS if accelerator == "gpu" else CPU_PRESETS
        if name not in table:
            raise ValueError(f"unknown {accelerator} preset {name!r}; choose one of {sorted(table)}")
        types = table[name]
    if len(set(types)) != len(types):
        raise ValueError(f"instance types repeat: {list(types)}")
    for itype in types:
        if is_gpu_type(itype) != (accelerator == "gpu"):
            kind = "a GPU" if is_gpu_type(itype) else "a CPU-only"
            raise ValueError(f"{itype} is {kind} type but the group's accelerator is {accelerator!r}")
    return types


@dataclass(frozen=True)
class CapacityMix:
    """How many of ``desired`` instances run on-demand and how many on spot."""

    on_demand: int
    spot: int


def capacity_mix(desired: int, on_demand_base: int, spot_percentage: int) -> CapacityMix:
    """The split EC2 Auto Scaling makes for a mixed instances policy.

    The first ``on_demand_base`` instances are on-demand; of the rest, ``100 - spot_percentage`` percent
    are on-demand, a fraction rounded up in favour of on-demand (as Auto Scaling does).
    """
    if desired < 0 or on_demand_base < 0:
        raise ValueError("desired and on_demand_base must be >= 0")
    if not 0 <= spot_percentage <= 100:
        raise ValueError("spot_percentage must be between 0 and 100")
    base = min(on_demand_base, desired)
    above = desired - base
    on_demand_above = math.ceil(above * (100 - spot_percentage) / 100)
    return CapacityMix(on_demand=base + on_demand_above, spot=above - on_demand_above)


def instances_distribution(on_demand_base: int, spot_percentage: int) -> dict[str, object]:
    """The ``instances_distribution`` block of a mixed instances policy (snake_case for pulumi_aws)."""
    capacity_mix(0, on_demand_base, spot_percentage)  # validates the numbers
    return {
        "on_demand_base_capacity": on_demand_base,
        "on_demand_percentage_above_base_capacity": 100 - spot_percentage,
        "on_demand_allocation_strategy": "prioritized",
        "spot_allocation_strategy": "price-capacity-optimized",
    }
