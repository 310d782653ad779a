"""`Gateway`: the stack's one Application Load Balancer in front of every endpoint.

Internal in the private subnets by default; internet-facing in the public subnets only with HTTPS
(an ACM certificate, a TLS 1.2+ policy), the client CIDRs it accepts and, optionally, mutual TLS.
Unknown paths get a fixed JSON 404. Endpoints add their listener rules with :meth:`Gateway.add_route`
and open their targets to the gateway alone with :meth:`Gateway.allow_targets`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

from common import uris
from infra import endpoints, naming

SCHEMES = ("internal", "internet-facing")
DEFAULT_SSL_POLICY = "ELBSecurityPolicy-TLS13-1-2-2021-06"
_TLS12_POLICY_RE = re.compile(r"^ELBSecurityPolicy-(TLS13-1-[23]-|TLS-1-2-|FS-1-2-)[A-Za-z0-9-]+$")
#: The body of the default action: what a client gets for a path no endpoint owns (a runtime-style error).
NOT_FOUND_BODY = json.dumps(
    {
        "__type": "ValidationError",
        "message": "No endpoint at this path: use POST /endpoints/<name>/invocations",
    },
    separators=(",", ":"),
)
ACCESS_LOG_PREFIX = "gateway"


@dataclass(frozen=True)
class Route:
    """One target group of a forward action and its ALB weight (0..999)."""

    target_group_arn: pulumi.Input[str]
    weight: int = 1


@dataclass
class GatewayArgs:
    """Inputs of :class:`Gateway`; validated when constructed.

    ``subnet_ids`` are the private subnets for ``internal``, the public ones for ``internet-facing``.
    ``allowed_cidrs`` and ``client_security_group_ids`` are the only sources the load balancer accepts.
    """

    vpc_id: pulumi.Input[str]
    subnet_ids: Sequence[pulumi.Input[str]]
    tags: Mapping[str, str]
    scheme: str = "internal"
    allowed_cidrs: Sequence[str] = field(default_factory=list)
    client_security_group_ids: Sequence[pulumi.Input[str]] = field(default_factory=list)
    certificate_arn: str | None = None
    ssl_policy: str = DEFAULT_SSL_POLICY
    trust_store_ca_bundle: str | None = None
    access_logs_bucket: pulumi.Input[str] | None = None
    idle_timeout: int = 60
    deletion_protection: bool = False

    def __post_init__(self) -> None:
        def bad(name: str, message: str) -> ValueError:
            return ValueError(f"GatewayArgs.{name}: {message}")

        if self.scheme not in SCHEMES:
            raise bad("scheme", f"must be one of {SCHEMES}, got {self.scheme!r}")
        if len(self.subnet_ids) < 2:
            raise bad("subnet_ids", "an Application Load Balancer needs subnets in at least 2 AZs")
        if self.scheme == "internet-facing":
            if not self.certificate_arn:
                raise bad("certificate_arn", "an internet-facing gateway serves HTTPS only")
            if not self.allowed_cidrs:
                raise bad("allowed_cidrs", "an internet-facing gateway needs the client CIDRs it accepts")
        if not self.allowed_cidrs and not self.client_security_group_ids:
            raise bad("allowed_cidrs", "no client could reach the gateway")
        if not _TLS12_POLICY_RE.match(self.ssl_policy):
            raise bad("ssl_policy", f"{self.ssl_policy!r} allows TLS older than 1.2")
        if self.trust_store_ca_bundle is not None:
            if not self.certificate_arn:
                raise bad("trust_store_ca_bundle", "mutual TLS needs HTTPS (certificate_arn)")
            if not re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/\S+", self.trust_store_ca_bundle):
                raise bad(
                    "trust_store_ca_bundle", f"{self.trust_store_ca_bundle!r} is not an s3://bucket/key URI"
                )
        if not 1 <= self.idle_timeout <= 4000:
            raise bad("idle_timeout", "must be 1-4000 seconds")

    @property
    def https(self) -> bool:
        """Whether the listener speaks HTTPS (whenever a certificate is given)."""
        return self.certificate_arn is not None

    @property
    def port(self) -> int:
        """The listener port: 443 with a certificate, 80 without (internal only)."""
        return 443 if self.https else 80


class Gateway(pulumi.ComponentResource):
    """Security group, load balancer (invalid headers dropped, access logs), listener with a JSON 404."""

    def __init__(self, name: str, args: GatewayArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("selfmaker:endpoints:Gateway", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self._name = name
        self._args = args
        self._tags = {**args.tags, "Component": "gateway"}
        self._priorities: dict[int, str] = {}

        self.security_group = aws.ec2.SecurityGroup(
            naming.child_name(name, "sg"),
            vpc_id=args.vpc_id,
            description=f"selfmaker gateway {name} ({args.scheme})",
            tags=self._tagged("sg"),
            opts=child,
        )
        for i, cidr in enumerate(args.allowed_cidrs):
            aws.vpc.SecurityGroupIngressRule(
                naming.child_name(name, f"client-{i}"),
                security_group_id=self.security_group.id,
                cidr_ipv4=cidr,
                ip_protocol="tcp",
                from_port=args.port,
                to_port=args.port,
                description="endpoint clients",
                tags=self._tagged(f"client-{i}"),
                opts=child,
            )
        for i, source in enumerate(args.client_security_group_ids):
            aws.vpc.SecurityGroupIngressRule(
                naming.child_name(name, f"client-sg-{i}"),
                security_group_id=self.security_group.id,
                referenced_security_group_id=source,
                ip_protocol="tcp",
                from_port=args.port,
                to_port=args.port,
                description="endpoint clients in the VPC",
                tags=self._tagged(f"client-sg-{i}"),
                opts=child,
            )
            # client groups may start without egress (the workload group reaches only its own members)
            aws.vpc.SecurityGroupEgressRule(
                naming.child_name(name, f"client-sg-{i}-out"),
                security_group_id=source,
                referenced_security_group_id=self.security_group.id,
                ip_protocol="tcp",
                from_port=args.port,
                to_port=args.port,
                description=f"to the endpoint gateway {name}",
                tags=self._tagged(f"client-sg-{i}-out"),
                opts=child,
            )

        lb_kwargs: dict[str, Any] = {}
        if args.access_logs_bucket is not None:
            lb_kwargs["access_logs"] = {
                "bucket": args.access_logs_bucket,
                "prefix": ACCESS_LOG_PREFIX,
                "enabled": True,
            }
        self.load_balancer = aws.lb.LoadBalancer(
            naming.child_name(name, "alb"),
            load_balancer_type="application",
            internal=args.scheme == "internal",
            subnets=list(args.subnet_ids),
            security_groups=[self.security_group.id],
            # Malformed header names never reach the model servers (request smuggling, header confusion).
            drop_invalid_header_fields=True,
            desync_mitigation_mode="strictest",
            idle_timeout=args.idle_timeout,
            enable_deletion_protection=args.deletion_protection,
            enable_http2=True,
            tags=self._tagged("alb"),
            opts=child,
            **lb_kwargs,
        )

        listener_kwargs: dict[str, Any] = {}
        self.trust_store: aws.lb.TrustStore | None = None
        if args.https:
            listener_kwargs.update(certificate_arn=args.certificate_arn, ssl_policy=args.ssl_policy)
            if args.trust_store_ca_bundle is not None:
                bucket, key = uris.split_s3(args.trust_store_ca_bundle)
                self.trust_store = aws.lb.TrustStore(
                    naming.child_name(name, "trust-store"),
                    ca_certificates_bundle_s3_bucket=bucket,
                    ca_certificates_bundle_s3_key=key,
                    tags=self._tagged("trust-store"),
                    opts=child,
                )
                listener_kwargs["mutual_authentication"] = {
                    "mode": "verify",
                    "trust_store_arn": self.trust_store.arn,
                }
        self.listener = aws.lb.Listener(
            naming.child_name(name, "listener"),
            load_balancer_arn=self.load_balancer.arn,
            port=args.port,
            protocol="HTTPS" if args.https else "HTTP",
            default_actions=[
                {
                    "type": "fixed-response",
                    "fixed_response": {
                        "content_type": "application/json",
                        "status_code": "404",
                        "message_body": NOT_FOUND_BODY,
                    },
                }
            ],
            tags=self._tagged("listener"),
            opts=child,
            **listener_kwargs,
        )
        scheme = "https" if args.https else "http"
        #: The base URL clients use (``endpoint_url`` of boto3's sagemaker-runtime client).
        self.url: pulumi.Output[str] = pulumi.Output.concat(scheme, "://", self.load_balancer.dns_name)
        self.register_outputs(
            {
                "url": self.url,
                "load_balancer_arn": self.load_balancer.arn,
                "security_group_id": self.security_group.id,
                "listener_arn": self.listener.arn,
            }
        )

    def _tagged(self, role: str) -> dict[str, str]:
        return naming.with_name(self._tags, naming.child_name(self._name, role))

    def allow_targets(self, name: str, security_group: aws.ec2.SecurityGroup, port: int) -> None:
        """Let the load balancer reach ``port`` of the instances in ``security_group`` (and nothing else).

        The targets' ingress from the gateway is the target group's own business (InstanceGroup's
        ``ingress_security_group_ids``); this adds the gateway's matching egress rule.
        """
        if not 1 <= port <= 65535:
            raise ValueError(f"Gateway.allow_targets: port {port} is not 1-65535")
        role = f"{name}-out"
        aws.vpc.SecurityGroupEgressRule(
            naming.child_name(self._name, role),
            security_group_id=self.security_group.id,
            referenced_security_group_id=security_group.id,
            ip_protocol="tcp",
            from_port=port,
            to_port=port,
            description=f"to the model servers of {name}",
            tags=self._tagged(role),
            opts=pulumi.ResourceOptions(parent=self),
        )

    def add_route(
        self,
        name: str,
        *,
        paths: Sequence[str],
        routes: Sequence[Route],
        priority: int,
        header: tuple[str, str] | None = None,
        method: str = "POST",
    ) -> aws.lb.ListenerRule:
        """A listener rule: ``method`` on ``paths`` (and ``header`` if given) forwarded to ``routes``.

        ``routes`` are weighted target groups (ALB: at most 5, weights 0..999, not all 0); ``priority``
        must be unique on the listener (see :func:`infra.endpoints.priority_blocks`).
        """

        def bad(message: str) -> ValueError:
            return ValueError(f"Gateway.add_route({name!r}): {message}")

        if not paths or len(paths) + (1 if header else 0) + 1 > 5:
            raise bad("an ALB rule takes at most 5 condition values (the paths, the method and the header)")
        if not 1 <= len(routes) <= endpoints.MAX_TARGET_GROUPS:
            raise bad(f"1-{endpoints.MAX_TARGET_GROUPS} target groups per rule, got {len(routes)}")
        if any(not 0 <= r.weight <= endpoints.MAX_ALB_WEIGHT for r in routes) or not any(
            r.weight for r in routes
        ):
            raise bad("weights must be 0-999 and not all 0")
        if not 1 <= priority <= endpoints.MAX_PRIORITY:
            raise bad(f"priority {priority} is not 1-{endpoints.MAX_PRIORITY}")
        if priority in self._priorities:
            raise bad(f"priority {priority} is taken by {self._priorities[priority]!r}")
        self._priorities[priority] = name
        conditions: list[Any] = [
            {"path_pattern": {"values": list(paths)}},
            {"http_request_method": {"values": [method]}},
        ]
        if header is not None:
            conditions.append({"http_header": {"http_header_name": header[0], "values": [header[1]]}})
        # Always the weighted form, so a change of weights (or of the number of variants) is an update
        # of this rule's action and nothing else.
        action: Any = {
            "type": "forward",
            "forward": {"target_groups": [{"arn": r.target_group_arn, "weight": r.weight} for r in routes]},
        }
        role = f"{name}-rule"
        return aws.lb.ListenerRule(
            naming.child_name(self._name, role),
            listener_arn=self.listener.arn,
            priority=priority,
            conditions=conditions,
            actions=[action],
            tags=self._tagged(role),
            opts=pulumi.ResourceOptions(parent=self),
        )
