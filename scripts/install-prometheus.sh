#!/usr/bin/env bash
# Make sure a Prometheus server binary exists for tests/selfmaker/test_prometheus.py, which scrapes a
# running `selfmaker up` with it and runs the Grafana dashboard's queries (docs/grafana-dashboard.json).
# Where none is on PATH and we are root on Debian/Ubuntu, install Debian's `prometheus` package (the
# binary only is used: the test starts it on 127.0.0.1 with its own config and data directory; the
# package's service is not started). Idempotent and quick when one exists; never fails the build: the
# test says why it skips instead.
set -euo pipefail

command -v prometheus >/dev/null && exit 0
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
  echo "install-prometheus: no prometheus binary and cannot install one here (need root + apt);" \
       "the real-Prometheus test will be skipped" >&2
  exit 0
fi
echo "install-prometheus: installing prometheus from Debian packages" >&2
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d (containers) or no systemd: the package's service is not started either way
apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
  || { apt-get update -qq >/dev/null 2>&1; apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1; } \
  || echo "install-prometheus: apt-get install failed; the real-Prometheus test will be skipped" >&2
