"""Helpers every test package uses: a free port and readiness polling (``tests/`` is on ``sys.path``
through the root conftest, so any test or helper module can ``from testkit import ...``)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import requests


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, *, timeout: float = 30.0, status: int = 200, alive: Callable[[], bool] | None = None) -> None:
    """Poll ``url`` until it answers ``status``; fail with the last answer after ``timeout`` seconds.

    ``alive`` is checked between polls so a server that died fails the test at once instead of
    after the deadline.
    """
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise AssertionError(f"server behind {url} exited before it was ready ({last})")
        try:
            resp = requests.get(url, timeout=2)
            if resp.status_code == status:
                return
            last = f"HTTP {resp.status_code}: {resp.text[:200]}"
        except requests.RequestException as exc:
            last = repr(exc)
        time.sleep(0.05)
    raise AssertionError(f"{url} did not answer {status} after {timeout}s: {last}")
