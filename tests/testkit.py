"""Helpers every test package uses: a free port, readiness and condition polling (``tests/`` is on
``sys.path`` through the root conftest, so any test or helper module can ``from testkit import ...``)."""

from __future__ import annotations

import time
from collections.abc import Callable

import requests

from common.proc import free_port


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (:func:`common.proc.free_port`)."""
    return free_port("127.0.0.1")


def wait_until(
    cond: Callable[[], object], timeout: float = 60.0, what: str = "condition", *, interval: float = 0.05
) -> None:
    """Poll ``cond`` every ``interval`` seconds until it is truthy; fail naming ``what`` after ``timeout``
    s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_http(
    url: str,
    *,
    timeout: float = 30.0,
    status: int = 200,
    alive: Callable[[], bool] | None = None,
    verify: bool | str = True,
) -> None:
    """Poll ``url`` until it answers ``status``; fail with the last answer after ``timeout`` seconds.

    ``alive`` is checked between polls so a server that died fails the test at once instead of
    after the deadline; ``verify`` is requests' (a CA bundle path for a server with a test certificate).
    """
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise AssertionError(f"server behind {url} exited before it was ready ({last})")
        try:
            resp = requests.get(url, timeout=2, verify=verify)
            if resp.status_code == status:
                return
            last = f"HTTP {resp.status_code}: {resp.text[:200]}"
        except requests.RequestException as exc:
            last = repr(exc)
        time.sleep(0.05)
    raise AssertionError(f"{url} did not answer {status} after {timeout}s: {last}")


def sigint_default() -> None:
    """``preexec_fn`` for a child a test interrupts with SIGINT (Ctrl-C): SIGINT back to its default
    action. A test run started in the background by a non-interactive shell (``cmd &``, nohup) inherits
    SIGINT ignored, and Python then installs no KeyboardInterrupt handler in the child."""
    import signal  # only the children that use it pay for the import

    signal.signal(signal.SIGINT, signal.SIG_DFL)
