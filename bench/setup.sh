#!/usr/bin/env bash
# Install what bench/peers.py needs besides pipgate: nginx (the reference peers), wrk
# (the load generator) and py-spy (profiles). Idempotent: each is installed only when
# missing. nginx is never started as a system service: a temporary policy-rc.d (as in
# scripts/test.sh) stops the package's scripts from starting it; peers.py runs its own
# nginx as a child, on a private prefix and port.
# Usage: sudo bash bench/setup.sh
set -euo pipefail
PYTHON="${PYTHON:-python3}"

missing=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v wrk >/dev/null || missing+=(wrk)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "setup.sh: ${missing[*]} missing; run as root on Debian/Ubuntu (apt-get)" >&2
        exit 1
    fi
    apt=(apt-get -o DPkg::Lock::Timeout=600)
    # bookworm has nginx-light; later releases only nginx (which has the same modules).
    if ! apt-cache show nginx-light >/dev/null 2>&1; then
        "${apt[@]}" update -qq
        apt-cache show nginx-light >/dev/null 2>&1 || missing=("${missing[@]/nginx-light/nginx}")
    fi
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && own_policy=1
    fi
    status=0
    { "${apt[@]}" update -qq \
        && DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null; } || status=$?
    [ "$own_policy" = 0 ] || rm -f "$policy"
    [ "$status" = 0 ] || { echo "setup.sh: apt-get install ${missing[*]} failed" >&2; exit "$status"; }
fi
"$PYTHON" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('py_spy') is None)" \
    2>/dev/null || command -v py-spy >/dev/null \
    || "$PYTHON" -m pip install --quiet --disable-pip-version-check py-spy
echo "setup.sh: $(nginx -v 2>&1 || /usr/sbin/nginx -v 2>&1); $(wrk -v 2>&1 | head -1);" \
    "py-spy $(py-spy --version 2>/dev/null || echo '(not on PATH)')"
