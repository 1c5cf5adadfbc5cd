#!/usr/bin/env bash
# Set-up and tests in one command: creates .venv (with $PYTHON, default
# python3, which must be 3.11+), installs dp-spark with its test extra, and
# runs pytest. Extra arguments go to pytest, e.g. scripts/test.sh tests/unit -x
set -euo pipefail
cd "$(dirname "$0")/.."
"${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
exec .venv/bin/python -m pytest "$@"
