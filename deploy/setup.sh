#!/usr/bin/env bash
# Make a Debian 12 / Ubuntu machine ready to run ztpki and its tests.
#
#   bash deploy/setup.sh            (from any directory)
#
# 1. Debian packages: SoftHSM2 + OpenSC (PKCS#11 token and tools), PostgreSQL,
#    nginx, OpenSSL, curl, strongSwan's `pki` (with the curl plugin that
#    `pki --est` needs) and wrk (for bench/).
# 2. A virtualenv in .venv with `pip install -e '.[test]'`.
#
# Idempotent: apt-get only runs when a package is missing, and pip only runs
# when pyproject.toml changed since the last install (stamp in .venv).
# Environment: PYTHON (default python3) is the interpreter used for .venv.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT=$(pwd)
VENV="$REPO_ROOT/.venv"
STAMP="$VENV/.ztpki-installed"
PYTHON=${PYTHON:-python3}
export DEBIAN_FRONTEND=noninteractive

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }

# run LOGFILE CMD...: run CMD with its output in LOGFILE; on failure show the
# log's tail and stop.
run() {
    local log=$1; shift
    if ! "$@" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        die "failed: $* (full output in $log)"
    fi
}

# Debian packages the project needs.
#   libstrongswan-extra-plugins ships /usr/lib/ipsec/plugins/libstrongswan-curl.so,
#   without which `pki --est` / `pki --scepclient` cannot fetch anything.
#   libstrongswan-standard-plugins ships the openssl plugin, without which
#   `pki` reads no EC key or certificate; libstrongswan only recommends it,
#   and we install with --no-install-recommends (issue 11).
PACKAGES=(
    softhsm2
    opensc
    postgresql
    nginx
    openssl
    curl
    strongswan-pki
    libstrongswan-extra-plugins
    libstrongswan-standard-plugins
    wrk
)

# --- Python ----------------------------------------------------------------
command -v "$PYTHON" >/dev/null 2>&1 \
    || die "no '$PYTHON' on PATH; install Python >= 3.11 or set PYTHON=/path/to/python3.11+"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    || die "$PYTHON is Python $("$PYTHON" -c 'import platform; print(platform.python_version())'); ztpki needs >= 3.11 (set PYTHON=...)"

# Debian's own python3 has no venv/ensurepip until python3.X-venv is installed.
if [[ ! -x "$VENV/bin/python" ]] && ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    py_exe=$("$PYTHON" -c 'import os, sys; print(os.path.realpath(sys.executable))')
    if [[ $py_exe == /usr/bin/python3* ]]; then
        PACKAGES+=("python$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv")
    else
        die "$PYTHON ($py_exe) cannot create virtualenvs (no ensurepip/venv module)"
    fi
fi

# --- Debian packages -------------------------------------------------------
command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found: this script supports Debian 12 / Ubuntu only"

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
    say "Debian packages: all ${#PACKAGES[@]} present"
else
    say "Debian packages missing: ${missing[*]}"
    if ((EUID == 0)); then
        SUDO=()
    elif command -v sudo >/dev/null 2>&1; then
        if [[ -t 0 ]]; then SUDO=(sudo); else SUDO=(sudo -n); fi
    else
        die "not root and no sudo: as root, run
    apt-get update && apt-get install -y --no-install-recommends ${missing[*]}
then run this script again"
    fi
    apt_log=$(mktemp "${TMPDIR:-/tmp}/ztpki-apt.XXXXXX")
    say "apt-get update"
    run "$apt_log" "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
    say "apt-get install ${missing[*]}"
    # If postgresql's postinst starts the distribution's default cluster
    # service, that is left running: the tests start their own clusters.
    run "$apt_log" "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${missing[@]}"
    rm -f "$apt_log"
    say "Debian packages installed"
fi

# --- virtualenv --------------------------------------------------------------
if [[ -x "$VENV/bin/python" ]] \
    && "$VENV/bin/python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1; then
    say "virtualenv: $VENV present"
else
    if [[ -e "$VENV" ]]; then
        say "virtualenv: $VENV is broken or too old, recreating"
        rm -rf "$VENV"
    fi
    say "virtualenv: creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi

want_stamp="$(sha256sum pyproject.toml | cut -d' ' -f1) $("$VENV/bin/python" -c 'import platform; print(platform.python_version())')"
have_stamp=$(cat "$STAMP" 2>/dev/null || true)
if [[ $have_stamp == "$want_stamp" ]]; then
    say "python packages: up to date (pyproject.toml unchanged)"
else
    say "python packages: pip install -e '.[test]' (this can take a minute)"
    rm -f "$STAMP"
    run "$VENV/pip-install.log" "$VENV/bin/python" -m pip install \
        --disable-pip-version-check --progress-bar off -e '.[test]'
    printf '%s\n' "$want_stamp" >"$STAMP"
    say "python packages: installed"
fi

say "ready: run the tests with  .venv/bin/python -m pytest"
