#!/usr/bin/env bash
# Set-up and tests in one command: creates .venv (with $PYTHON, default
# python3, which must be 3.11+), installs dp-spark with its test extra, and
# runs pytest. Extra arguments go to pytest, e.g. scripts/test.sh tests/unit -x
set -euo pipefail
cd "$(dirname "$0")/.."
"${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
if [ $# -gt 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
# Everything on classic Spark, then the end-to-end tests again under Spark
# Connect (a process holds one kind of session only).
.venv/bin/python -m pytest
exec .venv/bin/python -m pytest tests/spark -m e2e --spark-mode connect
