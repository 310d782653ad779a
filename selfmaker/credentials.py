"""Access keys of `selfmaker up`: ``<home>/credentials``, a JSON file only its owner can read.

``selfmaker keys create|list|delete`` edits the file; a running platform re-reads it when it changes
(checked at most once a second), so a new key works and a deleted one stops working without a restart.
A SigV4 signature is an HMAC keyed by the secret, so the secret itself is stored (as AWS stores it): the
file is created with mode 0600, written to a temporary file of the same mode and renamed into place, and
never logged.

Each key may carry an allow-list of actions in IAM's syntax (``sagemaker:InvokeEndpoint``,
``sagemaker:Describe*``); a key without one may call everything.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import re
import secrets
import string
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

#: the file in the platform's home
CREDENTIALS_FILE = "credentials"
#: AWS access key ids are 16 to 128 characters of [A-Z0-9]; ours start with this prefix
KEY_PREFIX = "SMAK"
_KEY_ALPHABET = string.ascii_uppercase + string.digits
#: an IAM action: ``service:Action`` where the action may hold ``*`` and ``?`` wildcards
ACTION_PATTERN = re.compile(r"^[a-z0-9-]+:[A-Za-z0-9*?]+$|^\*$")
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9._@+=,-]{1,64}$")

log = logging.getLogger(__name__)


class CredentialsError(Exception):
    """The credentials file or a key request is unusable (said in one line)."""


@dataclass(frozen=True)
class AccessKey:
    """One access key: its id, secret, a name for people, and the actions it may call (None: all)."""

    key_id: str
    secret: str = field(repr=False)
    name: str = ""
    created: str = ""
    actions: tuple[str, ...] | None = None

    def allows(self, action: str) -> bool:
        """Whether ``action`` (``service:Operation``) matches the key's allow-list (IAM wildcards,
        case-insensitive like IAM)."""
        if self.actions is None:
            return True
        return any(action_matches(pattern, action) for pattern in self.actions)

    def public(self) -> dict[str, object]:
        """What ``keys list`` shows: everything but the secret."""
        return {
            "KeyId": self.key_id,
            "Name": self.name,
            "Created": self.created,
            "Actions": list(self.actions) if self.actions is not None else None,
        }


def action_matches(pattern: str, action: str) -> bool:
    """IAM's action matching: ``*`` any run of characters, ``?`` one character, case-insensitive."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, action, flags=re.IGNORECASE) is not None


def check_actions(actions: list[str]) -> tuple[str, ...]:
    """``actions`` validated (each ``service:Action``, IAM wildcards); CredentialsError names a bad one."""
    for action in actions:
        if not ACTION_PATTERN.match(action):
            raise CredentialsError(
                f"{action!r} is not an IAM action: write service:Action, e.g. sagemaker:InvokeEndpoint or "
                "sagemaker:Describe*"
            )
    return tuple(actions)


class CredentialStore:
    """The keys in ``<home>/credentials``, re-read when the file changes."""

    def __init__(self, home: Path) -> None:
        self.path = home / CREDENTIALS_FILE
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._keys: dict[str, AccessKey] = {}
        self._checked = float("-inf")

    # ---- reading ---------------------------------------------------------------------------------

    def keys(self, *, max_age: float = 0.0) -> dict[str, AccessKey]:
        """The keys by id. With ``max_age`` the file is looked at again only after that many seconds
        (the platform's per-request path: one ``stat`` a second at most), and a file that stopped parsing
        (a hand edit) keeps the keys last read, logged once; without, CredentialsError."""
        now = time.monotonic()
        if max_age and now - self._checked < max_age:
            return self._keys
        with self._lock:
            self._checked = now
            try:
                st = self.path.stat()
            except FileNotFoundError:
                self._stamp, self._keys = None, {}
                return self._keys
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                try:
                    self._keys = self._parse(self.path.read_text(encoding="utf-8"))
                except CredentialsError as exc:
                    if not max_age:
                        raise
                    log.error("%s; the keys read before stay in force until it is fixed", exc)
                self._stamp = stamp
            return self._keys

    def _parse(self, text: str) -> dict[str, AccessKey]:
        try:
            data = json.loads(text) if text.strip() else {"keys": []}
            keys = {}
            for item in data["keys"]:
                actions = item.get("actions")
                key = AccessKey(
                    key_id=str(item["key_id"]),
                    secret=str(item["secret"]),
                    name=str(item.get("name") or ""),
                    created=str(item.get("created") or ""),
                    actions=tuple(str(a) for a in actions) if actions is not None else None,
                )
                keys[key.key_id] = key
            return keys
        except (ValueError, KeyError, TypeError) as exc:
            raise CredentialsError(f"{self.path} is not a selfmaker credentials file ({exc})") from None

    # ---- writing (the `keys` command) ------------------------------------------------------------

    @contextlib.contextmanager
    def _editing(self) -> Iterator[dict[str, AccessKey]]:
        """The keys to change in place, written back atomically; two `keys` commands at once take turns."""
        # a home made here (keys before the first `selfmaker up`) is owner-only from the start
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_path = self.path.with_name(CREDENTIALS_FILE + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            keys = dict(self.keys())
            yield keys
            self._write(keys)
            self._checked = float("-inf")  # this process's next look reads what it just wrote
        finally:
            os.close(fd)

    def _write(self, keys: dict[str, AccessKey]) -> None:
        payload = {
            "keys": [
                {
                    "key_id": k.key_id,
                    "secret": k.secret,
                    "name": k.name,
                    "created": k.created,
                    "actions": list(k.actions) if k.actions is not None else None,
                }
                for k in keys.values()
            ]
        }
        tmp = self.path.with_name(f".{CREDENTIALS_FILE}.{os.getpid()}.tmp")
        # created 0600 from the start: the secret is never readable by others, not even for a moment
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(payload, out, indent=2)
                out.write("\n")
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def create(self, name: str = "", actions: list[str] | None = None) -> AccessKey:
        """A new key (random id and 40-character secret), saved before it is returned."""
        if name and not _NAME_PATTERN.match(name):
            raise CredentialsError(f"key name {name!r}: use 1 to 64 letters, digits and ._@+=,- (no spaces)")
        allowed = check_actions(actions) if actions is not None else None
        with self._editing() as keys:
            if name and any(k.name == name for k in keys.values()):
                raise CredentialsError(f"a key named {name!r} exists already")
            key = AccessKey(
                key_id=KEY_PREFIX + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(16)),
                secret=secrets.token_urlsafe(30),
                name=name,
                created=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                actions=allowed,
            )
            keys[key.key_id] = key
        return key

    def delete(self, key_id_or_name: str) -> AccessKey:
        """Remove the key with that id (or name); CredentialsError when there is none."""
        with self._editing() as keys:
            found = keys.get(key_id_or_name) or next(
                (k for k in keys.values() if k.name and k.name == key_id_or_name), None
            )
            if found is None:
                raise CredentialsError(f"no key {key_id_or_name!r} in {self.path}")
            del keys[found.key_id]
        return found
