"""THE environment of every child process the platform starts: model servers (processes, the serverless
template and what it forks, containers' engine clients), training hosts, transform model servers, async
workers.

A child gets an explicit environment, never the platform's whole one (which may hold any secret of the
operator's shell: a database password, a token, the AWS keys the platform itself uses):

* what makes a process work on this machine (:data:`MACHINE_NAMES`, :data:`MACHINE_PREFIXES`: the
  path, home, locale, temporary directory, proxies and CA bundles, the GPU selection, ``SELFMAKER_*``
  settings that children read themselves);
* the AWS settings a model needs to find AWS (:data:`AWS_SETTING_NAMES`: region, endpoint URLs, CA
  bundle, retry mode) — never credentials;
* the names the operator adds (``SELFMAKER_CHILD_ENV``: names, or prefixes ending in ``*``);
* what the caller passes: the SageMaker contract's variables and the Model's ``Environment``;
  credentials (:func:`aws_credentials`) only by callers whose child reads or writes S3 itself.

The container engine's client (docker, podman) also keeps its own settings (:data:`ENGINE_PREFIXES`);
the container itself sees only the names passed with ``-e``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

#: variables of the parent every child keeps: the machine, not secrets
MACHINE_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TERM",
        "TMPDIR",
        "TEMP",
        "TMP",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONUNBUFFERED",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONWARNINGS",
        "VIRTUAL_ENV",
        "LD_LIBRARY_PATH",
        "CUDA_VISIBLE_DEVICES",
        "NVIDIA_VISIBLE_DEVICES",
        "OMP_NUM_THREADS",
        "MALLOC_ARENA_MAX",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "PIP_INDEX_URL",
        "PIP_EXTRA_INDEX_URL",
        "PIP_FIND_LINKS",
        "PIP_NO_INDEX",
        "PIP_CACHE_DIR",
    }
)
#: prefixes of the parent's variables every child keeps (locale, XDG directories, selfmaker's own
#: settings that children read, thread and GPU tuning of numeric libraries, coverage of the test suite's
#: subprocesses)
MACHINE_PREFIXES = ("LC_", "XDG_", "SELFMAKER_", "OMP_", "MKL_", "OPENBLAS_", "CUDA_", "NVIDIA_", "COVERAGE_")
#: where AWS is and how to talk to it; no credentials
AWS_SETTING_NAMES = frozenset(
    {
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_CA_BUNDLE",
        "AWS_USE_FIPS_ENDPOINT",
        "AWS_USE_DUALSTACK_ENDPOINT",
        "AWS_STS_REGIONAL_ENDPOINTS",
        "AWS_RETRY_MODE",
        "AWS_MAX_ATTEMPTS",
    }
)
AWS_SETTING_PREFIXES = ("AWS_ENDPOINT_URL_",)
#: the credentials of the platform's own AWS identity: only for children that use S3 themselves
AWS_CREDENTIAL_NAMES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
)
#: the container engine client's own settings (the engine's socket, configuration, registries)
ENGINE_PREFIXES = (
    "DOCKER_",
    "CONTAINER_",
    "CONTAINERS_",
    "_CONTAINERS_",
    "PODMAN_",
    "BUILDAH_",
    "REGISTRY_",
    "STORAGE_",
    "DBUS_",
)
#: the operator's additions: comma-separated names, or prefixes ending in ``*``
PASSTHROUGH_ENV = "SELFMAKER_CHILD_ENV"


def _kept(name: str, names: frozenset[str], prefixes: tuple[str, ...]) -> bool:
    return name in names or name.startswith(prefixes)


def passthrough_names(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """The operator's ``SELFMAKER_CHILD_ENV`` as a tuple of names / ``PREFIX*`` patterns."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    return tuple(item.strip() for item in items if item.strip())


def child_environment(
    extra: Mapping[str, str] | None = None,
    *,
    passthrough: Iterable[str] | None = None,
    engine_client: bool = False,
    parent: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a child: the machine's and AWS's settings from ``parent`` (default
    ``os.environ``), the ``passthrough`` names (``NAME`` or ``PREFIX*``; default: the parent's
    ``SELFMAKER_CHILD_ENV``), then ``extra`` (the contract, the Model's ``Environment``, credentials where
    the caller adds them), which wins.

    ``engine_client``: the child is docker's or podman's client, which also keeps its own settings.
    """
    source = os.environ if parent is None else parent
    if passthrough is None:
        passthrough = passthrough_names(source.get(PASSTHROUGH_ENV))
    passthrough = tuple(passthrough)
    prefixes = MACHINE_PREFIXES + AWS_SETTING_PREFIXES + (ENGINE_PREFIXES if engine_client else ())
    names = MACHINE_NAMES | AWS_SETTING_NAMES
    exact = {item for item in passthrough if not item.endswith("*")}
    starts = tuple(item[:-1] for item in passthrough if item.endswith("*") and len(item) > 1)
    env = {
        name: value
        for name, value in source.items()
        if _kept(name, names, prefixes) or name in exact or (starts and name.startswith(starts))
    }
    if extra:
        env.update({str(k): str(v) for k, v in extra.items()})
    return env


def aws_credentials(parent: Mapping[str, str] | None = None) -> dict[str, str]:
    """The platform's AWS credentials from ``parent`` (default ``os.environ``), for a child that reads or
    writes S3 itself (a training host, an async worker, a transform model server fetching its model)."""
    source = os.environ if parent is None else parent
    return {name: source[name] for name in AWS_CREDENTIAL_NAMES if source.get(name)}
