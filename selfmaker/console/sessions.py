"""Signed-in browsers of the web console: a login with an access key, then a session cookie.

A browser cannot sign requests with SigV4, so once the platform asks for signatures (keys in
``<home>/credentials``, or a non-loopback address) the console asks for an access key id and its secret
once (``POST /console/login``), checks them against the credentials file and the key's allow-list
(:data:`VIEW_ACTION`), and answers with a cookie that is:

* ``HttpOnly`` (page scripts cannot read it), ``SameSite=Strict`` (another site's page cannot make the
  browser send it), ``Path=/console``, ``Secure`` when served over TLS;
* signed: ``v1.<key id>.<expiry>.<HMAC-SHA256>`` keyed by a random secret the platform draws at start (a
  restart signs everyone out) over the key id, the expiry and a digest of the key's secret — so a
  deleted key, or a key whose secret changed, ends its sessions at once;
* expiring after ``SELFMAKER_CONSOLE_SESSION_SECONDS`` (12 hours by default).

The secret itself is never stored in the cookie, logged or echoed.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from selfmaker.credentials import AccessKey, CredentialsError, CredentialStore
from selfmaker.errors import AccessDenied, UnrecognizedClient

#: the IAM action a key's allow-list must match to use the console
VIEW_ACTION = "selfmaker:ViewConsole"
#: the session cookie's name
COOKIE_NAME = "selfmaker_console"
#: seconds between looks at the credentials file (as the SigV4 check)
KEYS_MAX_AGE = 1.0
_VERSION = "v1"


class ConsoleSessions:
    """Issues and checks the console's session cookies against the keys of ``store``."""

    def __init__(self, store: CredentialStore, lifetime: float, secret: bytes | None = None) -> None:
        self.store = store
        self.lifetime = lifetime
        self._secret = secret or secrets.token_bytes(32)

    def _mac(self, key: AccessKey, expires: int) -> str:
        bound = hashlib.sha256(key.secret.encode("utf-8")).hexdigest()
        message = f"{_VERSION}.{key.key_id}.{expires}.{bound}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def login(self, key_id: str, secret: str, now: float | None = None) -> tuple[str, AccessKey]:
        """The cookie value for a browser that knows ``key_id``'s ``secret`` (and its key), or an
        :class:`selfmaker.errors.AuthError`: an unknown key or wrong secret (one message for both, so
        the answer does not tell which key ids exist), a key whose allow-list does not name
        :data:`VIEW_ACTION`."""
        try:  # a sign-in is rare: the file as it is now (a key made a moment ago works)
            keys = self.store.keys()
        except CredentialsError:  # a hand edit broke the file: the keys last read, as the SigV4 check
            keys = self.store.keys(max_age=KEYS_MAX_AGE)
        key = keys.get(key_id)
        # compared even for an unknown key, so the time taken does not tell either
        expected = key.secret if key is not None else secrets.token_hex(20)
        if key is None or not hmac.compare_digest(expected.encode("utf-8"), secret.encode("utf-8")):
            raise UnrecognizedClient("The access key id or the secret access key is not valid.")
        if not key.allows(VIEW_ACTION):
            raise AccessDenied(f"Key {key.key_id} is not authorized to perform: {VIEW_ACTION}")
        expires = int((time.time() if now is None else now) + self.lifetime)
        return f"{_VERSION}.{key.key_id}.{expires}.{self._mac(key, expires)}", key

    def check(self, cookie: str | None, now: float | None = None) -> AccessKey | None:
        """The key a valid, unexpired session cookie was issued to (still present and still allowed to
        view the console); None otherwise."""
        if not cookie or len(cookie) > 512:
            return None
        parts = cookie.split(".")
        if len(parts) != 4 or parts[0] != _VERSION or not parts[2].isdigit():
            return None
        _, key_id, expires_text, mac = parts
        expires = int(expires_text)
        if expires < (time.time() if now is None else now):
            return None
        key = self.store.keys(max_age=KEYS_MAX_AGE).get(key_id)
        if key is None or not hmac.compare_digest(self._mac(key, expires), mac):
            return None
        return key if key.allows(VIEW_ACTION) else None
