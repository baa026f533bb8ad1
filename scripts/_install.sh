# shellcheck shell=bash
# Shared install logic for scripts/test, scripts/demo and .ci/run.
#
# Sourced:   source scripts/_install.sh; fusefs_install [EXTRA]
# Executed:  bash scripts/_install.sh [EXTRA]      (EXTRA: e.g. "test")
#
# On a Debian/Ubuntu machine it
#   1. installs the system packages pyfuse3 needs to build and mount (fuse3, libfuse3-dev,
#      pkg-config, gcc, python3-venv, python3-dev), only when something is missing; as root,
#      or through sudo when not root;
#      and libisal2 (ISA-L: fusefs's erasure coding ~15x faster; optional, fusefs falls back
#      to zfec and says so at mount if it cannot be installed);
#   2. creates the virtualenv .venv in the project root with the python3 on PATH (>= 3.11);
#   3. pip-installs the project editable into it (with the extra, if given);
#   4. rebuilds pyfuse3 from its source on the package index with fusefs's patch
#      (patches/pyfuse3-VERSION-*.patch: `read` learns the inode when there is no file
#      handle, which dataset mode's no-open mode needs), when a patch for the installed
#      version exists and the build in use is not patched yet. Any failure is a warning:
#      the stock build works, without no-open mode.
# Idempotent: step 3 is skipped while pyproject.toml is unchanged since the last install with
# the same extra (FUSEFS_REINSTALL=1 forces it).
# Afterwards FUSEFS_ROOT is the project root and FUSEFS_VENV the virtualenv.

FUSEFS_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FUSEFS_VENV="$FUSEFS_ROOT/.venv"
FUSEFS_APT_PACKAGES=(fuse3 libfuse3-dev pkg-config gcc python3-venv python3-dev)
FUSEFS_APT_FAST=libisal2

_say() { printf '==> %s\n' "$*"; }
_die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Run a command as root: directly when root, through sudo otherwise.
_as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    _die "need root or sudo to run: $*"
  fi
}

# Can python3 create a virtualenv (Debian: python3-venv) and build C extensions (python3-dev)?
_python_complete() {
  python3 - 2>/dev/null <<'PY'
import os, sysconfig
import ensurepip, venv  # noqa: F401  (Debian ships ensurepip in python3-venv)
raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))
PY
}

_system_packages_missing() {
  ! pkg-config --exists fuse3 2>/dev/null \
    || ! command -v fusermount3 >/dev/null 2>&1 \
    || ! command -v gcc >/dev/null 2>&1 \
    || ! command -v python3 >/dev/null 2>&1 \
    || ! _python_complete
}

fusefs_install_system_packages() {
  _system_packages_missing || return 0
  command -v apt-get >/dev/null 2>&1 \
    || _die "missing system packages and no apt-get: install ${FUSEFS_APT_PACKAGES[*]} (or your distribution's equivalents) by hand"
  if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
    _die "installing ${FUSEFS_APT_PACKAGES[*]} needs root: run this script as root, or install sudo"
  fi
  _say "installing system packages: ${FUSEFS_APT_PACKAGES[*]}"
  local log
  log=$(mktemp)
  if ! { _as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q \
      && _as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends "${FUSEFS_APT_PACKAGES[@]}"; } >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    rm -f "$log"
    _die "apt-get could not install ${FUSEFS_APT_PACKAGES[*]}"
  fi
  rm -f "$log"
  if _system_packages_missing; then
    _die "still missing after apt-get install: fuse3 (pkg-config, fusermount3), gcc or python3-venv/-dev"
  fi
}

_isal_missing() {
  ! { /sbin/ldconfig -p 2>/dev/null || ldconfig -p 2>/dev/null; } | grep -q 'libisal\.so\.2 '
}

# Optional: without it fusefs is correct, only slower; a failure here is a warning.
fusefs_install_fast_erasure() {
  _isal_missing || return 0
  if ! command -v apt-get >/dev/null 2>&1 \
      || { [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; }; then
    printf 'warning: %s is not installed: fusefs will use zfec (slower erasure coding)\n' \
      "$FUSEFS_APT_FAST" >&2
    return 0
  fi
  _say "installing $FUSEFS_APT_FAST (ISA-L: fast erasure coding)"
  if ! _as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends "$FUSEFS_APT_FAST" >/dev/null 2>&1; then
    _as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1 || true
    _as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends "$FUSEFS_APT_FAST" >/dev/null 2>&1 \
      || printf 'warning: apt-get could not install %s: fusefs will use zfec (slower erasure coding)\n' \
        "$FUSEFS_APT_FAST" >&2
  fi
}

fusefs_install_venv() {
  # Never build on top of whatever virtualenv the caller has activated.
  if [ -n "${VIRTUAL_ENV:-}" ]; then
    PATH=$(printf '%s' "$PATH" | tr ':' '\n' | grep -vxF "$VIRTUAL_ENV/bin" | paste -sd: -)
    unset VIRTUAL_ENV
  fi
  unset PYTHONHOME PYTHONPATH
  if [ -x "$FUSEFS_VENV/bin/python" ] \
    && "$FUSEFS_VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    return 0
  fi
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || _die "fusefs needs Python >= 3.11; python3 is $(python3 -V 2>&1)"
  if [ -e "$FUSEFS_VENV" ]; then
    _say "recreating broken virtualenv $FUSEFS_VENV"
    rm -rf "$FUSEFS_VENV"
  fi
  _say "creating virtualenv $FUSEFS_VENV ($(python3 -V 2>&1))"
  python3 -m venv "$FUSEFS_VENV"
}

fusefs_install_project() {
  local extra=${1:-} spec="$FUSEFS_ROOT" stamp hash
  [ -n "$extra" ] && spec="${FUSEFS_ROOT}[$extra]"
  stamp="$FUSEFS_VENV/.fusefs-installed${extra:+-$extra}"
  hash=$(sha256sum "$FUSEFS_ROOT/pyproject.toml" | cut -d' ' -f1)
  if [ "${FUSEFS_REINSTALL:-0}" != 1 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ] \
    && [ -x "$FUSEFS_VENV/bin/fusefs" ]; then
    return 0
  fi
  _say "pip install -q -e '.${extra:+[$extra]}' into .venv"
  PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
    "$FUSEFS_VENV/bin/python" -m pip install -q -e "$spec"
  printf '%s\n' "$hash" >"$stamp"
}

_pyfuse3_patched() {
  "$FUSEFS_VENV/bin/python" -c \
    'import sys, pyfuse3; sys.exit(not hasattr(pyfuse3.Operations, "read_noopen"))' 2>/dev/null
}

# Optional: the stock pyfuse3 is the fallback; a failure here is a warning.
fusefs_install_patched_pyfuse3() {
  local version patch tmp
  _pyfuse3_patched && return 0
  version=$("$FUSEFS_VENV/bin/python" -c 'import pyfuse3; print(pyfuse3.__version__)' 2>/dev/null) \
    || return 0
  patch=$(ls "$FUSEFS_ROOT/patches/pyfuse3-$version-"*.patch 2>/dev/null | head -n 1)
  if [ -z "$patch" ]; then
    printf 'warning: no fusefs patch for pyfuse3 %s: read-only mounts run without no-open mode\n' \
      "$version" >&2
    return 0
  fi
  _say "rebuilding pyfuse3 $version with $(basename "$patch")"
  tmp=$(mktemp -d)
  if ( cd "$tmp" \
      && PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 "$FUSEFS_VENV/bin/python" -m pip \
        download -q --no-binary :all: --no-deps "pyfuse3==$version" -d . \
      && tar xzf "pyfuse3-$version.tar.gz" && cd "pyfuse3-$version" \
      && git apply -p1 "$patch" \
      && PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 "$FUSEFS_VENV/bin/python" -m pip \
        install -q --no-deps --force-reinstall . ) >"$tmp/log" 2>&1 && _pyfuse3_patched; then
    rm -rf "$tmp"
  else
    tail -n 20 "$tmp/log" >&2
    rm -rf "$tmp"
    printf 'warning: could not build the patched pyfuse3: read-only mounts run without no-open mode\n' >&2
  fi
}

fusefs_install() {
  fusefs_install_system_packages
  fusefs_install_fast_erasure
  fusefs_install_venv
  fusefs_install_project "${1:-}"
  fusefs_install_patched_pyfuse3
}

# Executed rather than sourced: install and report.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  fusefs_install "${1:-}"
  _say "installed: $FUSEFS_VENV/bin/fusefs"
fi
