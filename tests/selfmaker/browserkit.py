"""A headless Chromium for the web console's tests: Debian's ``chromium`` driven by selenium through the
system ``chromedriver`` (scripts/install-browser.sh installs both; ``SELFMAKER_CHROMIUM`` and
``SELFMAKER_CHROMEDRIVER`` point at others). selenium-manager never downloads anything (``SE_OFFLINE``),
and every request the browser makes to a host other than loopback goes to a dead proxy."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

#: Chromium's flags: headless, no sandbox (root in CI), nothing but loopback on the network
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
    # loopback bypasses proxies: every other host goes to this closed port
    "--proxy-server=http://127.0.0.1:9",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--no-first-run",
    "--disable-domain-reliability",
)


def chromium() -> tuple[str, str] | None:
    """(browser, driver) paths, or None when either is missing."""
    browser = (
        os.environ.get("SELFMAKER_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )
    driver = (
        os.environ.get("SELFMAKER_CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
    )
    return (browser, driver) if browser and Path(driver).exists() else None


@contextlib.contextmanager
def headless_chromium() -> Iterator[Any]:
    """A selenium WebDriver of a headless Chromium that keeps the browser console's log (quit on exit);
    the test skips, saying why, where Chromium is not installed."""
    found = chromium()
    if found is None:
        pytest.skip("chromium and chromedriver are not installed (scripts/install-browser.sh installs them)")
    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never download a driver
    from selenium import webdriver  # only where a browser exists
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(found[1]), options=options)
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()


def js_errors(driver: Any) -> list[dict[str, Any]]:
    """The browser console's errors since the last call."""
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
