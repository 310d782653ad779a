#!/usr/bin/env bash
# Make sure a headless Chromium and its WebDriver exist for the web console's browser test
# (tests/selfmaker/test_console_browser.py): Debian's chromium + chromium-driver packages.
# Idempotent and quick when both are there; where they cannot be installed (not root, no apt) the test
# skips and says why.  SELFMAKER_CHROMIUM / SELFMAKER_CHROMEDRIVER point the test at other binaries.
set -euo pipefail

have() { command -v chromium >/dev/null && [[ -x /usr/bin/chromedriver ]]; }
have && exit 0

if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
  echo "install-browser: chromium missing and cannot be installed here (need root + apt);" \
       "the console's browser test will be skipped" >&2
  exit 0
fi

echo "install-browser: installing chromium and chromium-driver from Debian packages" >&2
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null 2>&1; then
  apt-get update -qq >/dev/null || echo "install-browser: apt-get update failed" >&2
  apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null \
    || { echo "install-browser: apt-get install failed; the console's browser test will be skipped" >&2; exit 0; }
fi
have && echo "install-browser: chromium ready" >&2 || echo "install-browser: chromium installed but not found" >&2
