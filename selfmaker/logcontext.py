"""Logging set-up for `selfmaker up` (called once by the entry point) with request context.

The request id, endpoint and variant of the request being handled ride in ContextVars; a filter adds
them to every record so the formatter can print them.
"""

from __future__ import annotations

import logging
import os
from contextvars import ContextVar
from pathlib import Path

request_id: ContextVar[str] = ContextVar("request_id", default="-")
endpoint_name: ContextVar[str] = ContextVar("endpoint_name", default="-")
variant_name: ContextVar[str] = ContextVar("variant_name", default="-")


class ContextFilter(logging.Filter):
    """Adds ``request_id``, ``endpoint`` and ``variant`` attributes to records."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        record.endpoint = endpoint_name.get()
        record.variant = variant_name.get()
        return True


def configure_logging(level: str = "INFO", log_file: Path | None = None) -> None:
    """Configure the root logger: stderr plus (optionally) a platform log file."""
    fmt = logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s [%(request_id)s %(endpoint)s/%(variant)s] %(message)s"
    )
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        # owner-only, like the rest of the home (created before the handler opens it)
        os.close(os.open(log_file, os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o600))
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    root = logging.getLogger()
    root.setLevel(level)
    for handler in handlers:
        handler.setFormatter(fmt)
        handler.addFilter(ContextFilter())
        root.addHandler(handler)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
