"""`Network`: a VPC over >= 2 AZs with public/private subnets, NAT, VPC endpoints and flow logs."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from infra import cidr, naming, policies

NAT_MODES = ("single", "per-az")
#: Interface endpoints the instances use instead of the NAT: image pulls, async queues, container logs.
INTERFACE_SERVICES = ("ecr.api", "ecr.dkr", "sqs", "logs")


@dataclass
class NetworkArgs:
    """Inputs of :class:`Network`; validated when constructed."""

    vpc_cidr: str
    availability_zones: Sequence[str]
    region: str
    tags: Mapping[str, str]
    nat_gateways: str = "single"
    interface_endpoints: bool = True
    flow_logs: bool = True
    flow_logs_retention_days: int = 90
    service_prefix: str = "com.amazonaws"
    account_id: str | None = None
    plan: cidr.SubnetPlan = field(init=False)

    def __post_init__(self) -> None:
        zones = list(self.availability_zones)
        if len(zones) < 2:
            raise ValueError(f"NetworkArgs.availability_zones: need at least 2 AZs, got {zones}")
        if len(set(zones)) != len(zones):
            raise ValueError(f"NetworkArgs.availability_zones: repeated AZ in {zones}")
        if self.nat_gateways not in NAT_MODES:
            raise ValueError(
                f"NetworkArgs.nat_gateways: must be one of {NAT_MODES}, got {self.nat_gateways!r}"
            )
        if not self.region:
            raise ValueError("NetworkArgs.region: required")
        if self.flow_logs_retention_days < 1:
            raise ValueError("NetworkArgs.flow_logs_retention_days: must be >= 1")
        try:
            self.plan = cidr.plan_subnets(self.vpc_cidr, len(zones))
        except ValueError as exc:
            raise ValueError(f"NetworkArgs.vpc_cidr: {exc}") from None


class Network(pulumi.ComponentResource):
    """VPC, subnets, routing, NAT, endpoints, flow logs and the two shared security groups.

    ``workload_security_group`` is attached to every instance; the interface endpoints accept HTTPS
    only from it. The VPC's default security group is emptied so nothing lands in an open group.
    """

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("selfmaker:network:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)
        zones = list(args.availability_zones)

        def tagged(role: str) -> dict[str, str]:
            return naming.with_name(tags, naming.child_name(name, role))

        self.vpc = aws.ec2.Vpc(
            naming.child_name(name, "vpc"),
            cidr_block=args.plan.vpc,
            enable_dns_support=True,
            enable_dns_hostnames=True,
            tags=tagged("vpc"),
            opts=child,
        )
        aws.ec2.DefaultSecurityGroup(
            naming.child_name(name, "default-sg"),
            vpc_id=self.vpc.id,
            ingress=[],
            egress=[],
            tags=tagged("default-sg"),
            opts=child,
        )
        igw = aws.ec2.InternetGateway(
            naming.child_name(name, "igw"), vpc_id=self.vpc.id, tags=tagged("igw"), opts=child
        )

        self.public_subnets: list[aws.ec2.Subnet] = []
        self.private_subnets: list[aws.ec2.Subnet] = []
        for i, zone in enumerate(zones):
            self.public_subnets.append(
                aws.ec2.Subnet(
                    naming.child_name(name, f"public-{i}"),
                    vpc_id=self.vpc.id,
                    cidr_block=args.plan.public[i],
                    availability_zone=zone,
                    map_public_ip_on_launch=False,
                    tags={**tagged(f"public-{i}"), "Tier": "public"},
                    opts=child,
                )
            )
            self.private_subnets.append(
                aws.ec2.Subnet(
                    naming.child_name(name, f"private-{i}"),
                    vpc_id=self.vpc.id,
                    cidr_block=args.plan.private[i],
                    availability_zone=zone,
                    map_public_ip_on_launch=False,
                    tags={**tagged(f"private-{i}"), "Tier": "private"},
                    opts=child,
                )
            )

        public_rt = aws.ec2.RouteTable(
            naming.child_name(name, "public-rt"), vpc_id=self.vpc.id, tags=tagged("public-rt"), opts=child
        )
        aws.ec2.Route(
            naming.child_name(name, "public-default"),
            route_table_id=public_rt.id,
            destination_cidr_block="0.0.0.0/0",
            gateway_id=igw.id,
            opts=child,
        )
        for i, subnet in enumerate(self.public_subnets):
            aws.ec2.RouteTableAssociation(
                naming.child_name(name, f"public-rta-{i}"),
                subnet_id=subnet.id,
                route_table_id=public_rt.id,
                opts=child,
            )

        nat_count = len(zones) if args.nat_gateways == "per-az" else 1
        nats: list[aws.ec2.NatGateway] = []
        for i in range(nat_count):
            eip = aws.ec2.Eip(
                naming.child_name(name, f"nat-eip-{i}"),
                domain="vpc",
                tags=tagged(f"nat-eip-{i}"),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[igw]),
            )
            nats.append(
                aws.ec2.NatGateway(
                    naming.child_name(name, f"nat-{i}"),
                    allocation_id=eip.id,
                    subnet_id=self.public_subnets[i].id,
                    connectivity_type="public",
                    tags=tagged(f"nat-{i}"),
                    opts=child,
                )
            )

        self.private_route_tables: list[aws.ec2.RouteTable] = []
        for i, subnet in enumerate(self.private_subnets):
            rt = aws.ec2.RouteTable(
                naming.child_name(name, f"private-rt-{i}"),
                vpc_id=self.vpc.id,
                tags=tagged(f"private-rt-{i}"),
                opts=child,
            )
            aws.ec2.Route(
                naming.child_name(name, f"private-default-{i}"),
                route_table_id=rt.id,
                destination_cidr_block="0.0.0.0/0",
                nat_gateway_id=nats[i % nat_count].id,
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                naming.child_name(name, f"private-rta-{i}"),
                subnet_id=subnet.id,
                route_table_id=rt.id,
                opts=child,
            )
            self.private_route_tables.append(rt)

        # S3 traffic (models, data, image layers) stays on the gateway endpoint: free and off the NAT.
        self.s3_endpoint = aws.ec2.VpcEndpoint(
            naming.child_name(name, "s3"),
            vpc_id=self.vpc.id,
            vpc_endpoint_type="Gateway",
            service_name=f"{args.service_prefix}.{args.region}.s3",
            route_table_ids=[rt.id for rt in self.private_route_tables],
            tags=tagged("s3"),
            opts=child,
        )

        self.workload_security_group = aws.ec2.SecurityGroup(
            naming.child_name(name, "workload-sg"),
            vpc_id=self.vpc.id,
            description="selfmaker instances (attached to every instance group)",
            tags=tagged("workload-sg"),
            opts=child,
        )
        # Security groups here start without the default allow-all egress; workload instances may open
        # connections to each other (what they accept is still decided by each group's own ingress rules).
        aws.vpc.SecurityGroupEgressRule(
            naming.child_name(name, "workload-peers-out"),
            security_group_id=self.workload_security_group.id,
            referenced_security_group_id=self.workload_security_group.id,
            ip_protocol="-1",
            description="to other selfmaker instances",
            tags=tagged("workload-peers-out"),
            opts=child,
        )
        self.endpoint_security_group: aws.ec2.SecurityGroup | None = None
        self.interface_endpoints: dict[str, aws.ec2.VpcEndpoint] = {}
        if args.interface_endpoints:
            self.endpoint_security_group = aws.ec2.SecurityGroup(
                naming.child_name(name, "endpoints-sg"),
                vpc_id=self.vpc.id,
                description="VPC interface endpoints: HTTPS from selfmaker instances",
                tags=tagged("endpoints-sg"),
                opts=child,
            )
            aws.vpc.SecurityGroupIngressRule(
                naming.child_name(name, "endpoints-https"),
                security_group_id=self.endpoint_security_group.id,
                referenced_security_group_id=self.workload_security_group.id,
                ip_protocol="tcp",
                from_port=443,
                to_port=443,
                description="HTTPS from instances",
                tags=tagged("endpoints-https"),
                opts=child,
            )
            for service in INTERFACE_SERVICES:
                role = service.replace(".", "-")
                self.interface_endpoints[service] = aws.ec2.VpcEndpoint(
                    naming.child_name(name, role),
                    vpc_id=self.vpc.id,
                    vpc_endpoint_type="Interface",
                    service_name=f"{args.service_prefix}.{args.region}.{service}",
                    private_dns_enabled=True,
                    subnet_ids=[s.id for s in self.private_subnets],
                    security_group_ids=[self.endpoint_security_group.id],
                    tags=tagged(role),
                    opts=child,
                )

        self.flow_log: aws.ec2.FlowLog | None = None
        if args.flow_logs:
            log_group = aws.cloudwatch.LogGroup(
                naming.child_name(name, "flow-logs"),
                retention_in_days=args.flow_logs_retention_days,
                tags=tagged("flow-logs"),
                opts=child,
            )
            flow_role = aws.iam.Role(
                naming.child_name(name, "flow-logs-role"),
                assume_role_policy=json.dumps(
                    policies.assume_role_policy("vpc-flow-logs.amazonaws.com", source_account=args.account_id)
                ),
                tags=tagged("flow-logs-role"),
                opts=child,
            )
            aws.iam.RolePolicy(
                naming.child_name(name, "flow-logs-policy"),
                role=flow_role.id,
                policy=log_group.arn.apply(lambda arn: json.dumps(policies.flow_logs_policy(arn))),
                opts=child,
            )
            self.flow_log = aws.ec2.FlowLog(
                naming.child_name(name, "flow-log"),
                vpc_id=self.vpc.id,
                traffic_type="ALL",
                log_destination_type="cloud-watch-logs",
                log_destination=log_group.arn,
                iam_role_arn=flow_role.arn,
                tags=tagged("flow-log"),
                opts=child,
            )

        self.vpc_id = self.vpc.id
        self.public_subnet_ids = [s.id for s in self.public_subnets]
        self.private_subnet_ids = [s.id for s in self.private_subnets]
        self.register_outputs(
            {
                "vpc_id": self.vpc_id,
                "public_subnet_ids": self.public_subnet_ids,
                "private_subnet_ids": self.private_subnet_ids,
                "workload_security_group_id": self.workload_security_group.id,
            }
        )
