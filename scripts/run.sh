#!/usr/bin/env bash
# Set-up and a first run in one command: creates .venv (with $PYTHON, default
# python3, which must be 3.11+), installs dp-spark, and runs the perturb job in
# local mode on the committed sample data with the default embeddings.
#
# Without arguments each run writes to a new output root,
# output/sample_reviews-<UTC time>: the privacy ledger under a root refuses to
# perturb the same data again with a fresh seed, so a second quickstart into
# the same root would (rightly) be refused. With arguments, they go to
# `python -m dp_spark`, e.g. scripts/run.sh perturb --config conf/sms_spam.toml
set -euo pipefail
cd "$(dirname "$0")/.."
"${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[spark,plot]'
if [ $# -eq 0 ]; then
  set -- perturb --config conf/local.toml --output "output/sample_reviews-$(date -u +%Y%m%dT%H%M%SZ)"
fi
exec .venv/bin/python -m dp_spark "$@"
