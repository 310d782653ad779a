"""The console's HTTP routes: its pages, static files, JSON and the login.

* ``GET /console`` and ``GET /console/<kind>/<name>`` — the page (one HTML shell; ``console.js`` draws
  the page the path names and refreshes it every couple of seconds);
* ``GET /console/static/…`` — scripts, styles and the vendored uPlot (shipped in the package);
* ``GET /console/api/overview``, ``/console/api/endpoints/{name}?window=10m|3h|1d|15d``,
  ``/console/api/training-jobs/{name}``, ``tuning-jobs``, ``transform-jobs``, ``processing-jobs`` — the
  JSON of :mod:`selfmaker.console.views`; ``/console/api/session`` — whether sign-in is needed and who is
  signed in;
* ``GET|POST /console/login``, ``POST /console/logout`` — :mod:`selfmaker.console.sessions`.

The handlers take ``(platform, request)`` like feature routes; :mod:`selfmaker.api.app` wraps them (Host
check, error rendering) and its middleware lets a request in with a session cookie or a SigV4 signature
(:func:`needs_no_auth` names the routes open to everyone). Everything is read-only.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from aiohttp import web

from selfmaker.console import views
from selfmaker.console.sessions import COOKIE_NAME, ConsoleSessions
from selfmaker.errors import AccessDenied, SageMakerError, ValidationException
from selfmaker.services import Services

SESSIONS_KEY: web.AppKey[ConsoleSessions] = web.AppKey("console_sessions", ConsoleSessions)
#: the package directory of the pages, scripts and the vendored chart library
STATIC_DIR = Path(__file__).with_name("static")
PREFIX = "/console"
#: the largest login form read
_LOGIN_MAX_BYTES = 4096
#: what the browser may load and run: this origin only, no inline script, no frames
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

Handler = Callable[[Services, web.Request], Awaitable[web.StreamResponse]]


def is_console_path(method: str, path: str) -> bool:
    """Whether a request is the console's (``GET /`` of a browser is sent to it)."""
    return path == PREFIX or path.startswith(PREFIX + "/") or (path == "/" and method in ("GET", "HEAD"))


def needs_no_auth(method: str, path: str) -> bool:
    """The console routes open without a session: the login form and its answer, signing out, the static
    files (public code and styles), and ``GET /`` (a redirect)."""
    return (
        path in (f"{PREFIX}/login", f"{PREFIX}/logout", "/")
        or path.startswith(f"{PREFIX}/static/")
        or (path == f"{PREFIX}/api/session" and method == "GET")
    )


def wants_page(request: web.Request) -> bool:
    """Whether the request is a browser's for a page (answered by a redirect to the login form when not
    signed in) rather than for JSON (answered 401)."""
    return not request.path.startswith(f"{PREFIX}/api/") and "text/html" in request.headers.get("Accept", "")


def login_redirect() -> web.Response:
    """The answer to a page requested without a session: 303 to the login form."""
    return web.Response(status=303, headers={"Location": f"{PREFIX}/login", "Cache-Control": "no-store"})


def _json(data: Any) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS),
        content_type="application/json",
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


@functools.cache
def _page_bytes(name: str) -> bytes:
    """A page of the package, read once (the event loop does not read the disk on every request)."""
    return (STATIC_DIR / name).read_bytes()


def _page(name: str) -> web.Response:
    return web.Response(
        body=_page_bytes(name),
        content_type="text/html",
        charset="utf-8",
        headers=_PAGE_HEADERS,
    )


async def root(platform: Services, request: web.Request) -> web.Response:
    """``GET /``: a browser goes to the console; anything else is told where the API is."""
    if "text/html" in request.headers.get("Accept", ""):
        raise web.HTTPSeeOther(PREFIX)
    raise ValidationException(
        "GET / serves the web console to browsers (/console); the SageMaker API is POST / with X-Amz-Target."
    )


async def page(platform: Services, request: web.Request) -> web.Response:
    """The console's HTML shell (the script draws the page the path names)."""
    return _page("index.html")


async def login_page(platform: Services, request: web.Request) -> web.Response:
    """The login form."""
    return _page("login.html")


def _same_origin(request: web.Request) -> bool:
    """Whether a form post comes from a page of this origin (or from a client that sends no Origin)."""
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc.lower() == request.headers.get("Host", "").lower()


async def login(platform: Services, request: web.Request) -> web.Response:
    """``POST /console/login`` with ``access_key_id`` and ``secret_access_key`` (a form or JSON): the
    session cookie, or 403 with the reason."""
    if not _same_origin(request):
        raise AccessDenied("The login form must be posted from the console's own page.")
    raw = await request.content.read(_LOGIN_MAX_BYTES + 1)
    if len(raw) > _LOGIN_MAX_BYTES:
        raise ValidationException(f"The login request is larger than {_LOGIN_MAX_BYTES} bytes.")
    fields: dict[str, Any]
    if request.content_type == "application/json":
        try:
            fields = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError:
            raise ValidationException("The login request is not valid JSON.") from None
        if not isinstance(fields, dict):
            raise ValidationException("The login request must be a JSON object.")
    else:
        fields = {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
    key_id, secret = fields.get("access_key_id"), fields.get("secret_access_key")
    if not isinstance(key_id, str) or not isinstance(secret, str) or not key_id or not secret:
        raise ValidationException("Give access_key_id and secret_access_key.")
    sessions = request.app[SESSIONS_KEY]
    cookie, key = sessions.login(key_id.strip(), secret.strip())
    response = _json({"signedIn": True, "keyId": key.key_id, "name": key.name})
    response.set_cookie(
        COOKIE_NAME,
        cookie,
        max_age=int(sessions.lifetime),
        path=PREFIX,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    return response


async def logout(platform: Services, request: web.Request) -> web.Response:
    """``POST /console/logout``: the session cookie is dropped."""
    response = _json({"signedIn": False})
    response.del_cookie(COOKIE_NAME, path=PREFIX)
    return response


async def session(platform: Services, request: web.Request) -> web.Response:
    """Whether the console asks for a sign-in, and the key signed in (if any)."""
    sessions = request.app[SESSIONS_KEY]
    key = sessions.check(request.cookies.get(COOKIE_NAME))
    return _json(
        {
            "authRequired": bool(request.get(AUTH_ACTIVE_KEY, False)),
            "keyId": key.key_id if key else None,
            "name": key.name if key else None,
        }
    )


#: set on a request by the middleware: whether the platform asks for signatures right now
AUTH_ACTIVE_KEY = "console_auth_active"


async def overview(platform: Services, request: web.Request) -> web.Response:
    return _json(await views.overview(platform))


async def endpoint(platform: Services, request: web.Request) -> web.Response:
    return _json(
        await views.endpoint(platform, request.match_info["name"], request.query.get("window", "10m"))
    )


async def training_job(platform: Services, request: web.Request) -> web.Response:
    return _json(await views.training_job(platform, request.match_info["name"]))


async def tuning_job(platform: Services, request: web.Request) -> web.Response:
    return _json(await views.tuning_job(platform, request.match_info["name"]))


async def transform_job(platform: Services, request: web.Request) -> web.Response:
    return _json(await views.transform_job(platform, request.match_info["name"]))


async def processing_job(platform: Services, request: web.Request) -> web.Response:
    return _json(await views.processing_job(platform, request.match_info["name"]))


async def not_found(platform: Services, request: web.Request) -> web.Response:
    raise SageMakerError(
        f"No console data at {request.path[:200]}.", code="NotFound", status=HTTPStatus.NOT_FOUND
    )


#: (method, path, handler) of every console route
ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/", root),
    ("GET", PREFIX, page),
    ("GET", PREFIX + "/", page),
    ("GET", PREFIX + "/endpoints/{name}", page),
    ("GET", PREFIX + "/training-jobs/{name}", page),
    ("GET", PREFIX + "/tuning-jobs/{name}", page),
    ("GET", PREFIX + "/transform-jobs/{name}", page),
    ("GET", PREFIX + "/processing-jobs/{name}", page),
    ("GET", PREFIX + "/login", login_page),
    ("POST", PREFIX + "/login", login),
    ("POST", PREFIX + "/logout", logout),
    ("GET", PREFIX + "/api/session", session),
    ("GET", PREFIX + "/api/overview", overview),
    ("GET", PREFIX + "/api/endpoints/{name}", endpoint),
    ("GET", PREFIX + "/api/training-jobs/{name}", training_job),
    ("GET", PREFIX + "/api/tuning-jobs/{name}", tuning_job),
    ("GET", PREFIX + "/api/transform-jobs/{name}", transform_job),
    ("GET", PREFIX + "/api/processing-jobs/{name}", processing_job),
    ("GET", PREFIX + "/api/{tail:.*}", not_found),
]
