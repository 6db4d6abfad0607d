#!/usr/bin/env bash
# Install everything the test suite needs, then run lint, type checks and the whole suite.
# Usage: bash scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

"$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".[test]"
"$PYTHON" -m ruff check server tests
"$PYTHON" -m mypy
exec "$PYTHON" -m pytest "$@"
