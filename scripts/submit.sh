#!/usr/bin/env bash
# Submit the perturb job (or another of jobs/) to a Spark cluster with spark-submit.
#
#   scripts/submit.sh CONFIG [job flags...]
#   SPARK_MASTER=spark://10.0.0.5:7077 scripts/submit.sh conf/cluster.toml --partition ds=2026-11-22
#   JOB=build SPARK_MASTER=spark://10.0.0.5:7077 scripts/submit.sh conf/cluster.toml --output s3a://bucket/artifacts
#
# What it does:
#   1. makes .venv (dp-spark with pyspark) if missing: the driver's Python and spark-submit;
#   2. packs the executors' Python environment (dp-spark and what its code
#      needs on executors: numpy, pandas, pyarrow, faiss; not pyspark, which
#      executors take from their Spark installation, and not the GloVe package:
#      the job ships the embeddings' artifact files itself) with venv-pack into
#      $ENV_ARCHIVE, rebuilt only when pyproject.toml or dp_spark/ change;
#   3. runs spark-submit with the archive (--archives ...#dp_spark_env), executors'
#      PYSPARK_PYTHON set to ./dp_spark_env/bin/python, the config shipped with --files,
#      and jobs/$JOB.py as the application.
#
# Variables it reads (all optional):
#   JOB                the job of jobs/ to run (default perturb): perturb, build (the
#                      artifact, its neighbour table found by the executors), calibrate,
#                      evaluate, audit
#   SPARK_MASTER       master URL (default local[2]); spark://host:port, yarn, k8s://...
#   DEPLOY_MODE        client (default) or cluster (the driver then runs in the cluster
#                      with the packed environment and reads the shipped config)
#   SPARK_HOME         a Spark installation whose bin/spark-submit is used; default: the
#                      spark-submit of pyspark in .venv
#   PYTHON             interpreter used to create the environments (default python3, 3.11+);
#                      executors need the same Python at the same path (venv-pack links to it)
#   ENV_ARCHIVE        path of the packed environment (default build/dp_spark_env.tar.gz)
#   SPARK_SUBMIT_ARGS  extra spark-submit arguments, split on spaces
#                      (e.g. "--executor-memory 4g --conf spark.executor.cores=2")
#   DP_SPARK_CACHE_DIR where the driver caches the built artifact (default ~/.cache/dp_spark)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 1 ] || [ ! -f "$1" ]; then
  echo "usage: scripts/submit.sh CONFIG [job flags...]  (CONFIG: a TOML file, e.g. conf/cluster.toml)" >&2
  exit 2
fi
config=$1
shift
job=${JOB:-perturb}
if [ ! -f "jobs/$job.py" ]; then
  echo "submit.sh: JOB=$job: no jobs/$job.py (jobs: $(cd jobs && ls *.py | sed 's/\.py$//' | tr '\n' ' '))" >&2
  exit 2
fi

python=${PYTHON:-python3}
master=${SPARK_MASTER:-local[2]}
deploy_mode=${DEPLOY_MODE:-client}
archive=${ENV_ARCHIVE:-build/dp_spark_env.tar.gz}

if [ ! -x .venv/bin/python ]; then
  echo "submit.sh: creating .venv (driver environment)" >&2
  "$python" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[spark,plot]'
fi

fingerprint=$(cat pyproject.toml $(find dp_spark -name '*.py' | sort) | sha256sum | cut -c1-16)
if [ ! -f "$archive" ] || [ "$(cat "$archive.sha" 2>/dev/null)" != "$fingerprint" ]; then
  echo "submit.sh: packing the executors' Python environment into $archive" >&2
  executor_env=build/executor-venv
  rm -rf "$executor_env"
  mkdir -p "$(dirname "$archive")"
  "$python" -m venv "$executor_env"
  "$executor_env/bin/python" -m pip install --quiet --upgrade pip
  # What executors run: no pyspark (Spark's own) and no GloVe (the artifact is shipped).
  "$executor_env/bin/python" -m pip install --quiet venv-pack numpy 'pandas<3' pyarrow faiss-cpu
  "$executor_env/bin/python" -m pip install --quiet --no-deps .
  "$executor_env/bin/venv-pack" --prefix "$executor_env" --output "$archive" --force --quiet
  echo "$fingerprint" > "$archive.sha"
fi

if [ -n "${SPARK_HOME:-}" ]; then
  spark_submit=$SPARK_HOME/bin/spark-submit
else
  spark_submit=$(.venv/bin/python -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-submit"))')
fi

submit=("$spark_submit" --master "$master" --deploy-mode "$deploy_mode" --name "dp-spark $job $(basename "$config")")
case "$master" in
  local*)
    # Local mode runs executors inside the driver: they use the driver's Python.
    export PYSPARK_PYTHON=$PWD/.venv/bin/python
    config_arg=$config
    ;;
  *)
    export PYSPARK_PYTHON=./dp_spark_env/bin/python
    submit+=(--archives "$archive#dp_spark_env" --files "$config"
             --conf spark.pyspark.python=./dp_spark_env/bin/python)
    if [ "$deploy_mode" = cluster ]; then
      config_arg=$(basename "$config")
    else
      config_arg=$config
      submit+=(--conf "spark.pyspark.driver.python=$PWD/.venv/bin/python")
    fi
    ;;
esac
export PYSPARK_DRIVER_PYTHON=${PYSPARK_DRIVER_PYTHON:-$PWD/.venv/bin/python}
# shellcheck disable=SC2206
extra=(${SPARK_SUBMIT_ARGS:-})
exec "${submit[@]}" "${extra[@]}" "jobs/$job.py" --config "$config_arg" "$@"
