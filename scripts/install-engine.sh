#!/usr/bin/env bash
# Make sure a working container engine exists: docker (with a running daemon) or podman.
# Where neither works and we are root on Debian, install podman + runc from Debian packages and
# configure it for this kind of host (runc instead of crun, no default ulimits).
# Idempotent and quick when an engine already works.  SELFMAKER_CONTAINER_ENGINE overrides.
set -euo pipefail

engine_works() { "$1" info >/dev/null 2>&1; }

# debootstrap makes the registry-free base image (scripts/build-images.sh, tests/containers)
ensure_debootstrap() {
  command -v debootstrap >/dev/null && return 0
  [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null || { echo "install-engine: debootstrap missing (needs root + apt)" >&2; return 0; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null 2>&1; } \
    || echo "install-engine: could not install debootstrap" >&2
}

if [[ -n "${SELFMAKER_CONTAINER_ENGINE:-}" ]] && engine_works "$SELFMAKER_CONTAINER_ENGINE"; then ensure_debootstrap; exit 0; fi
if command -v docker >/dev/null && engine_works docker; then ensure_debootstrap; exit 0; fi
if command -v podman >/dev/null && engine_works podman; then ensure_debootstrap; exit 0; fi

if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
  echo "install-engine: no working container engine and cannot install podman here (need root + apt);" \
       "container tests will be skipped" >&2
  exit 0
fi

echo "install-engine: installing podman, runc and debootstrap from Debian packages" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null || echo "install-engine: apt-get update failed" >&2
if ! apt-get install -y -qq podman runc debootstrap >/dev/null; then
  echo "install-engine: apt-get install failed; container tests will be skipped" >&2
  exit 0
fi
mkdir -p /etc/containers
if ! grep -qs 'runtime = "runc"' /etc/containers/containers.conf; then
  cat > /etc/containers/containers.conf <<'CONF'
[containers]
default_ulimits = []

[engine]
runtime = "runc"
CONF
fi
engine_works podman && echo "install-engine: podman ready" >&2 || echo "install-engine: podman installed but 'podman info' fails" >&2
