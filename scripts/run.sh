#!/usr/bin/env bash
# Set-up and a first run in one command: creates .venv (with $PYTHON, default
# python3, which must be 3.11+), installs dp-spark, and runs the demo on the
# default embeddings. Extra arguments go to `python -m dp_spark`.
set -euo pipefail
cd "$(dirname "$0")/.."
"${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
if [ $# -eq 0 ]; then set -- demo; fi
exec .venv/bin/python -m dp_spark "$@"
