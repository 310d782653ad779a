"""``MaxConcurrency`` as a machine-wide limit: N lock files, one ``flock`` per request in flight.

Whatever the platform's worker layout (one event loop, several processes), every process that routes
to a variant uses the same slot directory; a request may proceed only while it holds one of the
variant's N slots. The kernel drops the lock of a crashed process, so a slot is never lost.
Acquiring never waits: a full variant is answered at once with the throttling error.
"""

from __future__ import annotations

import fcntl
import os
import random
import threading
from pathlib import Path


class SlotLimiter:
    """At most ``capacity`` holders at a time across every process that uses ``directory``.

    ``try_acquire`` returns a slot number or None (full); ``release`` gives the slot back. Thread-safe.
    ``flock`` locks belong to open file descriptions, so one process opens each slot file once and keeps
    its own record of the slots it holds (a second ``flock`` on a held descriptor would succeed).
    """

    def __init__(self, directory: Path, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._fds: dict[int, int] = {}
        self._held: set[int] = set()
        self._mutex = threading.Lock()
        self.capacity = capacity

    def _fd(self, slot: int) -> int:
        fd = self._fds.get(slot)
        if fd is None:
            fd = os.open(self.directory / f"slot-{slot:03d}", os.O_RDWR | os.O_CREAT, 0o600)
            self._fds[slot] = fd
        return fd

    def resize(self, capacity: int) -> None:
        """Change the limit (``ServerlessUpdateConfig``); slots beyond it drain as their holders finish."""
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        with self._mutex:
            self.capacity = capacity

    def try_acquire(self) -> int | None:
        """A free slot, locked for the caller, or None when ``capacity`` requests are in flight."""
        with self._mutex:
            capacity = self.capacity
            start = random.randrange(capacity)
            for step in range(capacity):
                slot = (start + step) % capacity
                if slot in self._held:
                    continue
                fd = self._fd(slot)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                self._held.add(slot)
                return slot
            return None

    def release(self, slot: int) -> None:
        """Give ``slot`` back (idempotent)."""
        with self._mutex:
            if slot not in self._held:
                return
            self._held.discard(slot)
            fcntl.flock(self._fds[slot], fcntl.LOCK_UN)

    @property
    def held(self) -> int:
        """Slots held by this process."""
        return len(self._held)

    def close(self) -> None:
        """Release everything and close the slot files."""
        with self._mutex:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            self._held.clear()
