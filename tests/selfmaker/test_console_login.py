"""The web console's sign-in on a `selfmaker up` with access keys, over plain HTTP: no session → the login
form (pages) or 401 (JSON); a wrong key or secret → 403 in AWS's shape; the right one → an HttpOnly,
SameSite=Strict cookie that opens the console's JSON; a tampered, expired or revoked cookie opens nothing;
a SigV4-signed request works without a cookie; the control plane is unchanged."""

from __future__ import annotations

import time
import uuid
from http.cookies import SimpleCookie
from pathlib import Path

import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from platform_helpers import PlatformProcess, create_key
from testkit import wait_until

from selfmaker.console.sessions import COOKIE_NAME, VIEW_ACTION, ConsoleSessions
from selfmaker.credentials import CredentialStore
from selfmaker.errors import AccessDenied, UnrecognizedClient


def signed_headers(server: PlatformProcess, path: str, key: tuple[str, str]) -> dict[str, str]:
    """The headers of a GET of ``path`` signed with ``key`` by botocore's SigV4 signer."""
    request = AWSRequest(method="GET", url=server.url + path, headers={"Host": server.url.split("://", 1)[1]})
    SigV4Auth(Credentials(*key), "sagemaker", "us-east-1").add_auth(request)
    return dict(request.headers.items())


def _login(server: PlatformProcess, key_id: str, secret: str, **headers: str) -> requests.Response:
    return requests.post(
        server.url + "/console/login",
        json={"access_key_id": key_id, "secret_access_key": secret},
        headers=headers,
        timeout=30,
        allow_redirects=False,
    )


def test_console_sign_in(keyed_platform: PlatformProcess) -> None:
    assert keyed_platform.key is not None
    key_id, secret = keyed_platform.key
    url = keyed_platform.url
    # without a session: a page sends the browser to the login form, JSON is 401, the login form is open
    page = requests.get(url + "/console", headers={"Accept": "text/html"}, timeout=30, allow_redirects=False)
    assert page.status_code == 303 and page.headers["Location"] == "/console/login"
    root = requests.get(url + "/", headers={"Accept": "text/html"}, timeout=30, allow_redirects=False)
    assert root.status_code == 303 and root.headers["Location"] == "/console"
    data = requests.get(url + "/console/api/overview", timeout=30)
    assert data.status_code == 401 and data.json()["__type"] == "MissingAuthenticationToken"
    form = requests.get(url + "/console/login", timeout=30)
    assert form.status_code == 200 and "secret_access_key" in form.text
    assert "script-src 'self'" in form.headers["Content-Security-Policy"]
    script = requests.get(url + "/console/static/vendor/uPlot.iife.min.js", timeout=30)
    assert script.status_code == 200 and "uPlot" in script.text
    for escape in ("/console/static/%2e%2e/sessions.py", "/console/static/..%2fsessions.py"):
        outside = requests.get(url + escape, timeout=30)
        assert outside.status_code in (401, 403, 404) and "ConsoleSessions" not in outside.text
    assert requests.get(url + "/console/api/session", timeout=30).json()["authRequired"] is True

    # wrong secret, unknown key, missing fields, another site's form: refused in AWS's shape, no cookie
    wrong = (_login(keyed_platform, key_id, secret + "x"), _login(keyed_platform, "SMAKNOSUCHKEY00", secret))
    for bad in wrong:
        assert bad.status_code == 403, bad.text
        assert bad.json()["__type"] == "UnrecognizedClientException"
        assert "Set-Cookie" not in bad.headers and secret not in bad.text
    empty = requests.post(url + "/console/login", json={"access_key_id": key_id}, timeout=30)
    assert empty.status_code == 400 and empty.json()["__type"] == "ValidationException"
    foreign = _login(keyed_platform, key_id, secret, Origin="http://evil.example")
    assert foreign.status_code == 403 and "Set-Cookie" not in foreign.headers

    # the right key: a cookie only this origin's console sends, that page scripts cannot read
    good = _login(keyed_platform, key_id, secret, Origin=url)
    assert good.status_code == 200, good.text
    cookie = SimpleCookie(good.headers["Set-Cookie"])[COOKIE_NAME]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/console"
    assert 0 < int(cookie["max-age"]) <= 12 * 3600
    assert secret not in cookie.value
    jar = {COOKIE_NAME: cookie.value}
    overview = requests.get(url + "/console/api/overview", cookies=jar, timeout=30)
    assert overview.status_code == 200, overview.text
    assert set(overview.json()["jobs"]) == {"training", "tuning", "transform", "processing"}
    assert requests.get(url + "/console/api/session", cookies=jar, timeout=30).json()["keyId"] == key_id
    page = requests.get(url + "/console", cookies=jar, headers={"Accept": "text/html"}, timeout=30)
    assert page.status_code == 200 and "/console/static/console.js" in page.text
    # the cookie opens the console, not the API
    control = requests.post(
        url + "/",
        data=b"{}",
        cookies=jar,
        headers={"X-Amz-Target": "SageMaker.ListModels", "Content-Type": "application/x-amz-json-1.1"},
        timeout=30,
    )
    assert control.status_code == 403 and control.json()["__type"] == "MissingAuthenticationToken"
    # a tampered cookie opens nothing
    forged = cookie.value[:-1] + ("0" if cookie.value[-1] != "0" else "1")
    tampered = requests.get(url + "/console/api/overview", cookies={COOKIE_NAME: forged}, timeout=30)
    assert tampered.status_code == 401

    # SigV4 works without a cookie (scripts, curl with --aws-sigv4)
    signed = signed_headers(keyed_platform, "/console/api/overview", keyed_platform.key)
    assert requests.get(url + "/console/api/overview", headers=signed, timeout=30).status_code == 200

    # signing out drops the cookie
    out = requests.post(url + "/console/logout", cookies=jar, timeout=30)
    assert out.status_code == 200 and f"{COOKIE_NAME}=" in out.headers["Set-Cookie"]


def test_allow_list_and_revoked_keys(keyed_platform: PlatformProcess) -> None:
    url = keyed_platform.url
    suffix = uuid.uuid4().hex[:6]
    invoke_only = create_key(keyed_platform.home, f"invoke-only-{suffix}", "sagemaker:InvokeEndpoint")
    refused = _login(keyed_platform, *invoke_only)
    assert refused.status_code == 403 and refused.json()["__type"] == "AccessDeniedException"
    assert VIEW_ACTION in refused.json()["message"]
    viewer = create_key(keyed_platform.home, f"viewer-{suffix}", VIEW_ACTION)
    good = _login(keyed_platform, *viewer)
    assert good.status_code == 200
    jar = {COOKIE_NAME: good.cookies[COOKIE_NAME]}
    assert requests.get(url + "/console/api/overview", cookies=jar, timeout=30).status_code == 200
    # the viewer key cannot call the API itself
    signed = signed_headers(keyed_platform, "/metrics", viewer)
    assert requests.get(url + "/metrics", headers=signed, timeout=30).status_code == 403
    # a deleted key's sessions end (the platform re-reads the credentials file within a second)
    CredentialStore(keyed_platform.home).delete(viewer[0])
    deadline = time.monotonic() + 10
    while requests.get(url + "/console/api/overview", cookies=jar, timeout=30).status_code != 401:
        assert time.monotonic() < deadline, "a deleted key's session still opens the console"
        time.sleep(0.2)


def test_sessions_expire_and_bind_the_secret(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path)
    key = store.create("someone")
    sessions = ConsoleSessions(store, lifetime=60)
    cookie, who = sessions.login(key.key_id, key.secret, now=1000.0)
    assert who.key_id == key.key_id
    assert sessions.check(cookie, now=1059.0) == key
    assert sessions.check(cookie, now=1061.0) is None  # expired
    assert ConsoleSessions(store, lifetime=60).check(cookie, now=1001.0) is None  # another platform's secret
    for bad in ("", "v1.x", cookie.replace(key.key_id, "SMAKOTHER"), "v2" + cookie[2:], cookie + "0"):
        assert sessions.check(bad, now=1001.0) is None
    with pytest.raises(UnrecognizedClient):
        sessions.login(key.key_id, key.secret[:-1], now=1000.0)
    limited = store.create("limited", ["sagemaker:Describe*"])
    with pytest.raises(AccessDenied):
        sessions.login(limited.key_id, limited.secret)
    everything = store.create("viewer", ["selfmaker:*"])
    assert sessions.login(everything.key_id, everything.secret)[1].key_id == everything.key_id


def test_sign_in_in_chromium(keyed_platform: PlatformProcess) -> None:
    """The login form in a real browser: a wrong secret is told on the form, the right one opens the
    console (whose cookie page scripts cannot read), signing out goes back to the form."""
    from browserkit import headless_chromium, js_errors  # the browser only for this test
    from selenium.webdriver.common.by import By

    assert keyed_platform.key is not None
    key_id, secret = keyed_platform.key
    with headless_chromium() as driver:
        driver.get(keyed_platform.url + "/")
        wait_until(lambda: driver.current_url.endswith("/console/login"), timeout=10, what="the login form")

        def sign_in(with_secret: str) -> None:
            for field, value in (("access_key_id", key_id), ("secret_access_key", with_secret)):
                box = driver.find_element(By.ID, field)
                box.clear()
                box.send_keys(value)
            driver.find_element(By.ID, "submit").click()

        sign_in(secret + "x")
        error = driver.find_element(By.ID, "error")
        wait_until(lambda: error.text, timeout=10, what="the refusal on the form")
        assert "not valid" in error.text and driver.current_url.endswith("/console/login")
        refused = js_errors(driver)  # the browser logs the 403 of the refused sign-in, and nothing else
        assert all("/console/login" in e["message"] and "403" in e["message"] for e in refused), refused

        sign_in(secret)
        wait_until(
            lambda: (
                driver.current_url.rstrip("/").endswith("/console")
                and driver.execute_script("return document.body.dataset.refreshes") is not None
            ),
            timeout=15,
            what="the console after signing in",
        )
        who = driver.find_element(By.ID, "who")
        wait_until(lambda: who.text.startswith("signed in as "), timeout=10, what="who is signed in")
        assert driver.execute_script("return document.cookie") == ""  # HttpOnly: not for page scripts
        assert not js_errors(driver)

        driver.find_element(By.ID, "signout").click()
        wait_until(lambda: driver.current_url.endswith("/console/login"), timeout=10, what="signing out")
        driver.get(keyed_platform.url + "/console")
        assert driver.current_url.endswith("/console/login")  # the session is gone
