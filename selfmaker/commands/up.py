"""`selfmaker up`: the SageMaker-compatible control plane and runtime on one port."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from selfmaker.api.app import create_app
from selfmaker.api.registry import discover
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
    return parser


def private_directories(*paths: Path) -> None:
    """Create ``paths`` owner-only (0700) and take group and other access away from existing ones: the home
    holds the state (Model Environment values), logs and model data of everyone who uses the platform."""
    for path in paths:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.stat().st_mode & 0o077:
            path.chmod(0o700)


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
    try:
        private_directories(settings.home, settings.logs_dir)
    except OSError as exc:
        print(
            f"selfmaker up: cannot use {settings.home} as the home directory: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 2
    configure_logging(args.log_level.upper(), settings.logs_dir / "selfmaker.log")
    log = logging.getLogger("selfmaker.up")
    platform = Platform(settings, discover())
    app = create_app(platform.services)
    app.cleanup_ctx.append(platform.lifespan)
    log.info("selfmaker home %s, region %s, account %s", settings.home, settings.region, settings.account_id)

    announced = settings.home / PLATFORM_FILE

    def announce(message: str) -> None:
        # aiohttp's message carries the bound address (the real port when --port 0)
        found = re.search(r"http://\S+:\d+", message)
        url = found.group(0) if found else f"http://{settings.host}:{settings.port}"
        if url.startswith("http://0.0.0.0:"):
            url = url.replace("0.0.0.0", "127.0.0.1", 1)
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
