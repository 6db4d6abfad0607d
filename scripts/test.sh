#!/usr/bin/env bash
# Install everything the test suite needs, then run lint, type checks and the whole suite.
# Usage: bash scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

# System tools some tests need, installed when missing (as root, with apt): promtool
# (Debian's prometheus package) checks the monitoring config; chromium drives the
# browser test; wrk and nginx drive the short runs of bench/ (load, soak, peers); the
# fleet tests coordinate replicas through a real redis-server (issue 14). A
# temporary policy-rc.d keeps the packages from starting a Prometheus or an nginx.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    missing=()
    command -v promtool >/dev/null || missing+=(prometheus)
    command -v chromium >/dev/null || missing+=(chromium fonts-dejavu-core)
    command -v wrk >/dev/null || missing+=(wrk)
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
    command -v redis-server >/dev/null || missing+=(redis-server)
    if [ ${#missing[@]} -gt 0 ]; then
        policy=/usr/sbin/policy-rc.d
        own_policy=0
        if [ ! -e "$policy" ]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && own_policy=1
        fi
        status=0
        # Wait for another apt run (up to 10 min) instead of failing on its lock.
        apt=(apt-get -o DPkg::Lock::Timeout=600)
        { "${apt[@]}" update -qq \
            && DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq --no-install-recommends \
                "${missing[@]}" >/dev/null; } || status=$?
        [ "$own_policy" = 0 ] || rm -f "$policy"
        [ "$status" = 0 ] || { echo "test.sh: apt-get install ${missing[*]} failed" >&2; exit "$status"; }
    fi
fi

"$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".[test]"
# poetry, for the credential test with the real client: in a venv of its own (build/,
# ignored by git), so its many dependencies never mix with pipgate's.
if [ ! -x build/poetry/bin/poetry ]; then
    "$PYTHON" -m venv build/poetry
    build/poetry/bin/python -m pip install --quiet --disable-pip-version-check "poetry==2.5.1"
fi
"$PYTHON" -m ruff check server tests
"$PYTHON" -m mypy
exec "$PYTHON" -m pytest "$@"
