"""THE boto3 S3 client factory.

Every S3 client of selfmaker comes from :func:`client`, so every part honours the same endpoint rule:
an explicit ``endpoint_url``, else ``$AWS_ENDPOINT_URL_S3``, else ``$AWS_ENDPOINT_URL``, else AWS (moto's
server in tests, MinIO, real S3). The variables are read when the client is built, not at import.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

#: the variables that name an S3 endpoint, most specific first (botocore's service-specific names)
ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def endpoint_url(explicit: str | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """The S3 endpoint: ``explicit``, else the first set variable of :data:`ENDPOINT_ENVS` in ``env``
    (default ``os.environ``), else None (AWS)."""
    if explicit:
        return explicit
    env = os.environ if env is None else env
    for name in ENDPOINT_ENVS:
        value = env.get(name)
        if value:
            return value
    return None


def client(endpoint: str | None = None, *, max_pool_connections: int = 10, region: str | None = None) -> Any:
    """A new boto3 S3 client (standard retries) for :func:`endpoint_url` of ``endpoint``.

    Each call builds its own boto3 session, so threads may call it concurrently (boto3's default session
    is not thread-safe); a client itself is thread-safe, so callers keep the one they get.
    ``max_pool_connections``: the client's HTTP connection pool (raise it for many threads).
    """
    # boto3 loads with the first client, not with this module: the Lambda handler imports this module for
    # endpoint_url() while it must stay on the standard library (serving/lambda_handler.py)
    import boto3
    from botocore.config import Config

    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=endpoint_url(endpoint),
        region_name=region,
        config=Config(max_pool_connections=max_pool_connections, retries={"mode": "standard"}),
    )
