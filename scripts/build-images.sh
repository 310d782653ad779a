#!/usr/bin/env bash
# Build selfmaker's container images with docker or podman (`make images`).
#
#   scripts/build-images.sh [--cpu] [--gpu] [--base-only] [--base auto|registry|debootstrap]
#                           [--tag NAME] [--python-version X.Y]
#
# Default: the CPU image, tagged selfmaker:<version> and selfmaker:latest.
#
# Base image:
#   registry     BASE_IMAGE of the Dockerfile (python:3.11-slim; the CUDA image for --gpu), pulled from
#                its registry; pip installs from the package index during the build.
#   debootstrap  no registry at all: a minimal Debian bookworm made with debootstrap and imported as
#                localhost/selfmaker-base:bookworm, plus python3 from apt (localhost/selfmaker-python:bookworm),
#                and a wheelhouse downloaded on the host (pip inside the build needs no network).
#                This is the path used by CI and by tests/containers (the BYOC test image shares the base).
#   auto         (default) registry when the base can be pulled, else debootstrap.
#
# Everything cacheable lives under images/.build/ (gitignored): the debootstrap tarball, the wheelhouses
# and the build contexts, so a rerun on the same machine costs seconds.
#
# Environment: SELFMAKER_CONTAINER_ENGINE (docker|podman|path) overrides engine detection;
# SELFMAKER_IMAGE_CACHE overrides images/.build; DEBIAN_MIRROR the debootstrap mirror;
# PIP (default: .venv/bin/pip, else pip3) downloads the wheelhouse.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${SELFMAKER_IMAGE_CACHE:-$ROOT/images/.build}"
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE_TAG="localhost/selfmaker-base:$DEBIAN_SUITE"
PYTHON_BASE_TAG="localhost/selfmaker-python:$DEBIAN_SUITE"

build_cpu=0 build_gpu=0 base_only=0 base_mode=auto tag="" python_version=3.11
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cpu) build_cpu=1 ;;
    --gpu) build_gpu=1 ;;
    --base-only) base_only=1 ;;
    --base) base_mode="$2"; shift ;;
    --tag) tag="$2"; shift ;;
    --python-version) python_version="$2"; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "build-images: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[[ $build_cpu -eq 0 && $build_gpu -eq 0 ]] && build_cpu=1
case "$base_mode" in auto|registry|debootstrap) ;; *) echo "build-images: --base auto|registry|debootstrap" >&2; exit 2 ;; esac

log() { echo "build-images: $*" >&2; }

# ---- engine: the same rule as common/proc.py (detect_engine) ----------------------------------------
engine_works() { command -v "$1" >/dev/null 2>&1 && "$1" info >/dev/null 2>&1; }
detect_engine() {
  if [[ -n "${SELFMAKER_CONTAINER_ENGINE:-}" ]]; then
    engine_works "$SELFMAKER_CONTAINER_ENGINE" && { echo "$SELFMAKER_CONTAINER_ENGINE"; return; }
    log "SELFMAKER_CONTAINER_ENGINE=$SELFMAKER_CONTAINER_ENGINE does not work ('$SELFMAKER_CONTAINER_ENGINE info' fails)"
    return 1
  fi
  for candidate in docker podman; do engine_works "$candidate" && { echo "$candidate"; return; }; done
  log "no working container engine (docker with a daemon, or podman); run scripts/install-engine.sh"
  return 1
}
ENGINE="$(detect_engine)"
log "engine: $ENGINE"

image_exists() { "$ENGINE" image inspect "$1" >/dev/null 2>&1; }

# docker needs BuildKit off for nothing here, but podman/buildah and docker both accept these flags.
build() { "$ENGINE" build --network host "$@"; }

# ---- the debootstrap base ---------------------------------------------------------------------------
make_debian_base() {
  if image_exists "$BASE_TAG"; then return; fi
  local tarball="$CACHE/base/$DEBIAN_SUITE-minbase.tar"
  if [[ ! -s "$tarball" ]]; then
    command -v debootstrap >/dev/null || { log "debootstrap missing (apt-get install debootstrap, or scripts/install-engine.sh)"; exit 1; }
    [[ $(id -u) -eq 0 ]] || { log "debootstrap needs root"; exit 1; }
    local rootfs="$CACHE/base/rootfs"
    rm -rf "$rootfs" && mkdir -p "$rootfs"
    log "debootstrap --variant=minbase $DEBIAN_SUITE (one-off, cached in $tarball)"
    debootstrap --variant=minbase "$DEBIAN_SUITE" "$rootfs" "$DEBIAN_MIRROR" >"$CACHE/base/debootstrap.log" 2>&1 \
      || { tail -20 "$CACHE/base/debootstrap.log" >&2; exit 1; }
    # what the official debian:*-slim images do: no docs/man/locales, no recommends, no apt caches
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/01-selfmaker-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
CFG
    cat >"$rootfs/etc/apt/apt.conf.d/01-selfmaker-slim" <<'CFG'
APT::Install-Recommends "0";
APT::Install-Suggests "0";
Acquire::Languages "none";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
CFG
    cat >"$rootfs/etc/apt/sources.list" <<SRC
deb $DEBIAN_MIRROR $DEBIAN_SUITE main
deb $DEBIAN_MIRROR $DEBIAN_SUITE-updates main
deb http://deb.debian.org/debian-security $DEBIAN_SUITE-security main
SRC
    find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
    rm -rf "$rootfs"/usr/share/{man,info,locale,lintian}/* "$rootfs"/var/cache/apt/archives/*.deb \
           "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log "$rootfs"/tmp/*
    tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
  fi
  log "importing $tarball as $BASE_TAG"
  "$ENGINE" import "$tarball" "$BASE_TAG" >/dev/null
}

make_python_base() {
  make_debian_base
  if image_exists "$PYTHON_BASE_TAG"; then return; fi
  log "building $PYTHON_BASE_TAG (python3 from apt)"
  build -q -t "$PYTHON_BASE_TAG" --build-arg "BASE_IMAGE=$BASE_TAG" -f "$ROOT/images/base/Dockerfile.python" "$ROOT/images/base" >/dev/null
}

# ---- wheelhouse: every dependency as a wheel for the image's Python, downloaded on the host -----------
# Versions come from constraints.txt (`make constraints`): the same versions on every rebuild.
PIP="${PIP:-}"
if [[ -z "$PIP" ]]; then
  if [[ -x "$ROOT/.venv/bin/pip" ]]; then PIP="$ROOT/.venv/bin/pip"; else PIP="pip3"; fi
fi

make_wheelhouse() {  # $1 = requirements file name under images/, $2 = destination
  local req="$1" dest="$2"
  local stamp="$dest/.stamp" key
  key="$(cat "$ROOT"/images/requirements*.txt "$ROOT/constraints.txt" | sha256sum | cut -c1-16)-py$python_version"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$key" ]]; then return; fi
  log "downloading the wheelhouse for $req (python $python_version) into $dest"
  rm -rf "$dest" && mkdir -p "$dest"
  local host_version
  host_version="$("$PIP" --version | sed -n 's/.*(python \([0-9]*\.[0-9]*\)).*/\1/p')"
  if [[ "$host_version" == "$python_version" ]]; then
    # same interpreter version as the image: `pip wheel` also turns sdist-only packages into wheels
    (cd "$ROOT/images" && "$PIP" wheel -q -w "$dest" -r "$req" -c "$ROOT/constraints.txt" \
        && "$PIP" download -q --no-deps -d "$dest" pip)
  else
    # another Python: binary wheels only, for that version and any manylinux up to bookworm's glibc 2.36
    local platforms=() v
    for v in 17 24 25 26 27 28 29 30 31 32 33 34 35 36; do platforms+=(--platform "manylinux_2_${v}_x86_64"); done
    (cd "$ROOT/images" && "$PIP" download -q -d "$dest" -r "$req" -c "$ROOT/constraints.txt" pip \
        --only-binary=:all: --implementation cp --python-version "$python_version" \
        --abi "cp${python_version/./}" --platform manylinux2014_x86_64 "${platforms[@]}")
  fi
  echo "$key" >"$stamp"
}

# ---- build context: requirements, constraints, entrypoint, selfmaker's wheel in dist/ (+ the wheelhouse in wheels/)
make_context() {  # $1 = context dir, $2 = wheelhouse dir or ""
  local ctx="$1" wheelhouse="$2"
  rm -rf "$ctx" && mkdir -p "$ctx/wheels" "$ctx/dist"
  cp "$ROOT"/images/requirements*.txt "$ROOT/constraints.txt" "$ROOT/images/entrypoint.sh" "$ROOT/images/slim_venv.py" "$ctx/"
  if [[ -n "$wheelhouse" ]]; then
    # hard links: the context costs no copy of the wheelhouse
    cp -l "$wheelhouse"/*.whl "$ctx/wheels/" 2>/dev/null || cp "$wheelhouse"/*.whl "$ctx/wheels/"
  fi
  # selfmaker's own wheel from the working tree (pure Python, no dependencies resolved here)
  local src="$CACHE/src"
  rm -rf "$src" && mkdir -p "$src"
  (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard -- pyproject.toml README.md LICENSE \
        common serving training batch selfmaker infra | xargs -0 cp --parents -t "$src" 2>/dev/null) \
    || cp -r "$ROOT"/{pyproject.toml,README.md,common,serving,training,batch,selfmaker,infra} "$src/"
  "$PIP" wheel -q --no-deps --no-build-isolation -w "$ctx/dist" "$src" >/dev/null
}

version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -n1)"
revision="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
source_url="${SELFMAKER_SOURCE_URL:-https://github.com/selfmaker/selfmaker}"

resolve_base() {  # $1 = Dockerfile; prints "registry" or "debootstrap"
  local dockerfile="$1" default
  default="$(sed -n 's/^ARG BASE_IMAGE=//p' "$dockerfile" | head -n1)"
  case "$base_mode" in
    registry|debootstrap) echo "$base_mode" ;;
    auto)
      if image_exists "$default" || timeout 120 "$ENGINE" pull -q "$default" >/dev/null 2>&1; then echo registry
      else log "cannot pull $default: using the debootstrap base"; echo debootstrap; fi ;;
  esac
}

build_image() {  # $1 = cpu|gpu
  local flavour="$1" dockerfile req name ctx mode wheelhouse="" base_args=()
  if [[ "$flavour" == cpu ]]; then
    dockerfile="$ROOT/images/Dockerfile"; req=requirements.txt; name="${tag:-selfmaker}"
  else
    dockerfile="$ROOT/images/Dockerfile.gpu"; req=requirements-gpu.txt; name="${tag:-selfmaker-gpu}"
  fi
  mode="$(resolve_base "$dockerfile")"
  if [[ "$mode" == debootstrap ]]; then
    make_python_base
    base_args=(--build-arg "BASE_IMAGE=$PYTHON_BASE_TAG")
    wheelhouse="$CACHE/wheels/$flavour-py$python_version"
    make_wheelhouse "$req" "$wheelhouse"
  fi
  ctx="$CACHE/context-$flavour"
  make_context "$ctx" "$wheelhouse"
  log "building $name:$version from $(basename "$dockerfile") ($mode base)"
  build -t "$name:$version" -t "$name:latest" -f "$dockerfile" "${base_args[@]}" \
    --build-arg "VERSION=$version" --build-arg "REVISION=$revision" --build-arg "SOURCE=$source_url" \
    --build-arg "REQUIREMENTS=$req" "$ctx"
  local size
  size="$("$ENGINE" image inspect --format '{{.Size}}' "$name:$version")"
  log "built $name:$version ($((size / 1000000)) MB)"
}

mkdir -p "$CACHE/base" "$CACHE/wheels"
if [[ $base_only -eq 1 ]]; then
  make_python_base
  log "base images ready: $BASE_TAG, $PYTHON_BASE_TAG"
  exit 0
fi
[[ $build_cpu -eq 1 ]] && build_image cpu
[[ $build_gpu -eq 1 ]] && build_image gpu
exit 0
