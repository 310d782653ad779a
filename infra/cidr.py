"""Splitting a VPC CIDR into per-AZ public and private subnets (pure, property-tested)."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass

#: AWS accepts VPC blocks between /16 and /28; we need room for 2 x AZs subnets of at least /28.
MIN_VPC_PREFIX = 16
MAX_SUBNET_PREFIX = 28


@dataclass(frozen=True)
class SubnetPlan:
    """CIDR blocks for one VPC: ``public[i]`` and ``private[i]`` belong to the i-th AZ."""

    vpc: str
    public: tuple[str, ...]
    private: tuple[str, ...]


def plan_subnets(vpc_cidr: str, az_count: int) -> SubnetPlan:
    """Split ``vpc_cidr`` into ``az_count`` private and ``az_count`` public subnets.

    The first half of the VPC holds the private subnets (where the instances live, so they get the
    large blocks); the public subnets (NAT gateways and, later, load balancers) are a quarter of that
    size and are carved from the start of the second half, leaving the rest free for later use.
    Raises ``ValueError`` when the block is not a network address, is larger than /16, or is too small
    for subnets of at least /28.
    """
    if az_count < 1:
        raise ValueError("az_count must be at least 1")
    try:
        network = ipaddress.IPv4Network(vpc_cidr, strict=True)
    except ValueError as exc:
        raise ValueError(f"{vpc_cidr!r} is not an IPv4 network address: {exc}") from None
    if network.prefixlen < MIN_VPC_PREFIX:
        raise ValueError(f"{vpc_cidr}: AWS VPCs are at most /{MIN_VPC_PREFIX}")
    bits = math.ceil(math.log2(az_count)) if az_count > 1 else 0
    private_prefix = network.prefixlen + 1 + bits
    public_prefix = private_prefix + 2
    if public_prefix > MAX_SUBNET_PREFIX:
        raise ValueError(
            f"{vpc_cidr} is too small for {az_count} AZs: public subnets would be /{public_prefix} "
            f"(AWS needs /{MAX_SUBNET_PREFIX} or larger)"
        )
    first_half, second_half = network.subnets(prefixlen_diff=1)
    private = list(first_half.subnets(new_prefix=private_prefix))[:az_count]
    public = list(second_half.subnets(new_prefix=public_prefix))[:az_count]
    return SubnetPlan(str(network), tuple(map(str, public)), tuple(map(str, private)))
