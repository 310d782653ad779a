"""`ImageRepository`: an ECR repository with scan on push, immutable tags and a keep-last-N policy."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra import naming, policies

_ECR_NAME_RE = re.compile(r"^(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*$")


@dataclass
class ImageRepositoryArgs:
    """Inputs of :class:`ImageRepository`.

    ``repository_name`` is a physical name on purpose: it is where ``docker push`` sends images.
    """

    repository_name: str
    tags: Mapping[str, str]
    keep_last: int = 20
    untagged_days: int = 7

    def __post_init__(self) -> None:
        if not 2 <= len(self.repository_name) <= 256 or not _ECR_NAME_RE.match(self.repository_name):
            raise ValueError(
                f"ImageRepositoryArgs.repository_name: {self.repository_name!r} is not a valid ECR name"
            )
        if self.keep_last < 1:
            raise ValueError("ImageRepositoryArgs.keep_last: must be >= 1")
        if self.untagged_days < 1:
            raise ValueError("ImageRepositoryArgs.untagged_days: must be >= 1")


class ImageRepository(pulumi.ComponentResource):
    """One ECR repository (training or serving image) and its lifecycle policy."""

    def __init__(
        self, name: str, args: ImageRepositoryArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("selfmaker:registry:ImageRepository", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.repository = aws.ecr.Repository(
            naming.child_name(name, "repo"),
            name=args.repository_name,
            image_tag_mutability="IMMUTABLE",
            image_scanning_configuration={"scan_on_push": True},
            encryption_configurations=[{"encryption_type": "AES256"}],
            force_delete=False,
            tags=dict(args.tags),
            opts=child,
        )
        aws.ecr.LifecyclePolicy(
            naming.child_name(name, "lifecycle"),
            repository=self.repository.name,
            policy=json.dumps(policies.ecr_lifecycle_policy(args.keep_last, args.untagged_days)),
            opts=child,
        )
        self.repository_url: pulumi.Output[str] = self.repository.repository_url
        self.arn: pulumi.Output[str] = self.repository.arn
        self.register_outputs({"repository_url": self.repository_url, "arn": self.arn})
