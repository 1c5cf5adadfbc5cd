"""The scheduler examples: the Airflow DAG parses and renders the spark-submit
it will run (Airflow itself is not installed: its modules are stood in for),
and the Databricks job's parameters are ones the job accepts."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

from dp_spark.cli import parser_for

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class _Operator:
    created: list["_Operator"] = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        _Operator.created.append(self)


class _DAG:
    def __init__(self, **kwargs):
        self.dag_id = kwargs["dag_id"]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def render(template: str, context: dict[str, str]) -> str:
    """Jinja's {{ name }} substitution, enough for the DAG's templates."""
    for name, value in context.items():
        template = template.replace("{{ " + name + " }}", value)
    return template


def load_dag(monkeypatch):
    airflow = types.ModuleType("airflow")
    airflow.DAG = _DAG
    operators = types.ModuleType("airflow.providers.apache.spark.operators.spark_submit")
    operators.SparkSubmitOperator = _Operator
    for name in ("airflow.providers", "airflow.providers.apache", "airflow.providers.apache.spark",
                 "airflow.providers.apache.spark.operators"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "airflow", airflow)
    monkeypatch.setitem(sys.modules, operators.__name__, operators)
    _Operator.created.clear()
    spec = importlib.util.spec_from_file_location("airflow_dag", EXAMPLES / "airflow_dag.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    (operator,) = _Operator.created
    return operator.kwargs


def test_the_airflow_dag_renders_a_command_the_job_accepts_without_the_seed(monkeypatch):
    task = load_dag(monkeypatch)
    context = {"ds": "2026-11-22", "ds_nodash": "20261122", "dag.dag_id": "dp_spark_support_messages",
               "var.value.dp_spark_seed": "0f" * 16}
    args = [render(a, context) for a in task["application_args"]]
    assert task["application"].endswith("jobs/perturb.py")
    parsed = parser_for(["perturb"]).parse_args(["perturb", *args])
    assert parsed.partition == ["ds=2026-11-22"] and parsed.run_id == "dp_spark_support_messages-20261122"
    assert parsed.seed is None and parsed.seed_file is None
    assert not any("0f" * 16 in a for a in args)
    assert render(task["env_vars"]["DP_SPARK_SEED"], context) == "0f" * 16


def test_the_databricks_task_parameters_are_accepted_and_the_seed_comes_from_a_secret():
    job = json.loads((EXAMPLES / "databricks_job.json").read_text())
    (task,) = job["tasks"]
    parameters = [p.replace("{{job.start_time.iso_date}}", "2026-11-22").replace("{{job.id}}", "42")
                  for p in task["spark_python_task"]["parameters"]]
    parsed = parser_for(["perturb"]).parse_args(["perturb", *parameters])
    assert parsed.partition == ["ds=2026-11-22"] and parsed.seed is None
    (cluster,) = job["job_clusters"]
    assert cluster["new_cluster"]["spark_env_vars"]["DP_SPARK_SEED"].startswith("{{secrets/")
