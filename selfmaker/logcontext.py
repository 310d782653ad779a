"""Logging set-up for `selfmaker up` (called once by the entry point) with request context.

The request id, endpoint and variant of the request being handled ride in ContextVars; a filter adds
them to every record so the formatter can print them.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any

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


class OwnerOnlyRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A size-rotated log file whose every incarnation (the first and each after a rollover) is created
    owner-only (0600): it names the platform's resources and callers."""

    def _open(self) -> Any:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return open(fd, self.mode, encoding=self.encoding, errors=self.errors)  # noqa: SIM115 - the handler keeps it


def configure_logging(
    level: str = "INFO", log_file: Path | None = None, *, max_bytes: int = 0, backups: int = 5
) -> None:
    """Configure the root logger: stderr plus (optionally) a platform log file, rotated when it passes
    ``max_bytes`` (0: never) with ``backups`` older files kept."""
    fmt = logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s [%(request_id)s %(endpoint)s/%(variant)s] %(message)s"
    )
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(
            OwnerOnlyRotatingFileHandler(
                log_file, maxBytes=max_bytes, backupCount=backups if max_bytes else 0, encoding="utf-8"
            )
        )
    root = logging.getLogger()
    root.setLevel(level)
    for handler in handlers:
        handler.setFormatter(fmt)
        handler.addFilter(ContextFilter())
        root.addHandler(handler)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
