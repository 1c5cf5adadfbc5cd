"""An Airflow DAG: perturb one date partition of a data-lake table per day.

The secret seed comes from Airflow's secrets backend (a Variable or
Connection stored in Vault, AWS Secrets Manager, ...) into the job's
environment as DP_SPARK_SEED, never onto the command line (where ps and the
Spark UI would show it). With the same seed every day, a retry or a backfill
of a day replays that day's release exactly (no new privacy loss), and
``--run-id`` makes a retry of a run that already succeeded do nothing.

Copy it into your DAGs folder and set the paths; `tests/unit/test_examples.py`
renders the command it submits.
"""

from __future__ import annotations

from datetime import datetime

from airflow import DAG
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

# Where dp-spark's job and config live on the Airflow workers (a checkout or an installed wheel).
DP_SPARK = "/opt/dp-spark"
CONFIG = f"{DP_SPARK}/conf/cluster.toml"

with DAG(
    dag_id="dp_spark_support_messages",
    schedule="@daily",
    start_date=datetime(2026, 11, 1),
    catchup=True,  # backfills replay: same seed, same noise
    max_active_runs=1,  # runs on one output root are serialised by dp-spark's lock anyway
    tags=["privacy"],
) as dag:
    perturb = SparkSubmitOperator(
        task_id="perturb",
        application=f"{DP_SPARK}/jobs/perturb.py",
        files=CONFIG,
        application_args=[
            "--config", "cluster.toml",
            "--partition", "ds={{ ds }}",
            "--run-id", "{{ dag.dag_id }}-{{ ds_nodash }}",
            "--json",
        ],
        conn_id="spark_default",
        name="dp-spark perturb {{ ds }}",
        # The secret, from the secrets backend, into the driver's environment only.
        env_vars={"DP_SPARK_SEED": "{{ var.value.dp_spark_seed }}"},
        conf={"spark.sql.execution.arrow.maxRecordsPerBatch": "10000"},
        retries=2,
    )
