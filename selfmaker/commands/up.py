"""`selfmaker up`: the SageMaker-compatible control plane and runtime on one port."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import ssl
import sys
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from selfmaker.api.app import create_app
from selfmaker.api.auth import is_loopback
from selfmaker.api.registry import discover
from selfmaker.credentials import CredentialsError, CredentialStore
from selfmaker.logcontext import configure_logging
from selfmaker.platform import Platform
from selfmaker.settings import PlatformSettings

#: the file in the home that tells other commands where this platform listens (batch.cli.PLATFORM_FILE)
PLATFORM_FILE = "platform.json"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfmaker up", description=__doc__)
    parser.add_argument("--home", type=Path, help="state directory (default $SELFMAKER_HOME or ~/.selfmaker)")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to bind (default 7070)")
    parser.add_argument("--region", help="region in ARNs (default us-east-1)")
    parser.add_argument("--account-id", help="12-digit account id in ARNs")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    parser.add_argument(
        "--no-auth",
        action="store_true",
        default=None,
        help="check no signatures, even beyond loopback or with keys (a warning at every start)",
    )
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate (chain): serve HTTPS, TLS 1.2+")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    return parser


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The server's TLS context: TLS 1.2 or later, the certificate chain and key loaded (OSError or
    ssl.SSLError when a file is missing, unreadable or not a matching PEM pair)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    return context


def _access_problem(settings: PlatformSettings) -> str | None:
    """Why the platform must not start with these settings (an open port beyond loopback), or None."""
    if settings.no_auth:
        return None
    try:
        keys = CredentialStore(settings.home).keys()
    except CredentialsError as exc:
        return f"cannot read the access keys: {exc}"
    except OSError as exc:
        return f"cannot read the access keys in {settings.home}: {exc.strerror or exc}"
    if not keys and not is_loopback(settings.host):
        return (
            f"refusing to listen on {settings.host} without access keys: anyone who reaches the port could "
            "run code as this user; create one with `selfmaker keys create`, or pass --no-auth"
        )
    return None


def private_directories(*paths: Path) -> list[str]:
    """Create ``paths`` owner-only (0700): the home holds the state (Model Environment values), logs and
    model data of everyone who uses the platform. An existing directory is left as it is (``--home /tmp``
    must not take /tmp away from everyone else); the warnings returned say which ones others can read."""
    warnings: list[str] = []
    for path in paths:
        if not path.exists():
            path.mkdir(mode=0o700, parents=True)
            path.chmod(0o700)  # mkdir's mode is masked by the umask
        elif not path.is_dir():
            raise NotADirectoryError(20, "not a directory", str(path))
        elif path.stat().st_mode & 0o077:
            mode = oct(path.stat().st_mode & 0o777)[2:]
            warnings.append(f"{path} is open to other users (mode {mode}): `chmod 700 {path}` closes it")
    return warnings


def _event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (about a third less CPU per proxied request), else asyncio's loop."""
    try:  # optional: not every install has it
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main(argv: list[str]) -> int:
    """Run the platform until SIGINT/SIGTERM; model servers are stopped, state is kept for the next start."""
    args = _parser().parse_args(argv)
    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "home": args.home,
            "host": args.host,
            "port": args.port,
            "region": args.region,
            "account_id": args.account_id,
            "no_auth": args.no_auth,
            "tls_cert": args.tls_cert,
            "tls_key": args.tls_key,
        }.items()
        if v is not None
    }
    try:
        settings = PlatformSettings(**overrides)
    except ValidationError as exc:  # a bad flag or SELFMAKER_* variable: say which, no traceback
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            print(
                f"selfmaker up: invalid {where} (--{where.replace('_', '-')} or SELFMAKER_{where.upper()}): "
                f"{error['msg']}",
                file=sys.stderr,
            )
        return 2
    if (settings.tls_cert is None) != (settings.tls_key is None):
        print(
            "selfmaker up: --tls-cert and --tls-key go together (the certificate and its key)",
            file=sys.stderr,
        )
        return 2
    ssl_context = None
    if settings.tls_cert is not None and settings.tls_key is not None:
        try:
            ssl_context = tls_context(settings.tls_cert, settings.tls_key)
        except (OSError, ssl.SSLError) as exc:
            # SSLError is an OSError: test it first (its strerror is OpenSSL's terse text)
            if isinstance(exc, ssl.SSLError):
                reason = f"not a PEM certificate (chain) and its private key ({exc.reason or exc})"
            else:
                reason = exc.strerror or str(exc)
            print(
                f"selfmaker up: cannot use the TLS certificate {settings.tls_cert} and key "
                f"{settings.tls_key}: {reason}",
                file=sys.stderr,
            )
            return 2
    try:
        warnings = private_directories(settings.home, settings.logs_dir)
    except OSError as exc:
        print(
            f"selfmaker up: cannot use {settings.home} as the home directory: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 2
    problem = _access_problem(settings)
    if problem:
        print(f"selfmaker up: {problem}", file=sys.stderr)
        return 2
    configure_logging(
        args.log_level.upper(),
        settings.logs_dir / "selfmaker.log",
        max_bytes=settings.log_max_bytes,
        backups=settings.log_backups,
    )
    log = logging.getLogger("selfmaker.up")
    if ssl_context is None and not is_loopback(settings.host):
        # signatures keep strangers out, but bodies, answers and key ids still cross the network readable
        log.warning(
            "serving plain HTTP on %s: requests and answers travel unencrypted; pass --tls-cert/--tls-key",
            settings.host,
        )
    if settings.no_auth:
        log.warning(
            "--no-auth: no signature is checked; anyone who reaches %s:%s can run code as this user",
            settings.host,
            settings.port,
        )
    for warning in warnings:
        log.warning("%s", warning)
    platform = Platform(settings, discover())
    app = create_app(platform.services)
    app.cleanup_ctx.append(platform.lifespan)
    log.info("selfmaker home %s, region %s, account %s", settings.home, settings.region, settings.account_id)

    announced = settings.home / PLATFORM_FILE

    def announce(message: str) -> None:
        # aiohttp's message carries the bound address (the real port when --port 0)
        scheme = "https" if ssl_context is not None else "http"
        found = re.search(r"https?://\S+:\d+", message)
        url = found.group(0) if found else f"{scheme}://{settings.host}:{settings.port}"
        url = re.sub(r"^https?://", f"{scheme}://", url)
        url = url.replace(f"{scheme}://0.0.0.0:", f"{scheme}://127.0.0.1:", 1)
        # `selfmaker transform` / `train --aws-batch` find this platform through its home
        announced.write_text(json.dumps({"url": url, "pid": os.getpid()}), encoding="utf-8")
        print(f"selfmaker up: listening on {url} (home {settings.home})", flush=True)

    try:
        web.run_app(
            app,
            host=settings.host,
            port=settings.port,
            access_log=None,
            print=announce,
            shutdown_timeout=10.0,
            ssl_context=ssl_context,
            handle_signals=True,
            loop=_event_loop(),
        )
    except OSError as exc:  # the address: in use, not on this machine, not allowed
        print(
            f"selfmaker up: cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 2
    finally:
        try:
            if json.loads(announced.read_text(encoding="utf-8")).get("pid") == os.getpid():
                announced.unlink()
        except (OSError, ValueError):
            pass
    return 0
