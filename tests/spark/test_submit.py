"""scripts/submit.sh against a real standalone cluster on this machine: a
master and two 1-core workers on loopback, the packed environment shipped to
the executors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pyspark
import pytest

REPO = Path(__file__).resolve().parents[2]
SPARK_CLASS = Path(pyspark.__file__).parent / "bin" / "spark-class"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def standalone_cluster(tmp_path_factory):
    work = tmp_path_factory.mktemp("standalone")
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(work / "logs"),
           "SPARK_WORKER_DIR": str(work / "workers")}
    port, ui = free_port(), free_port()
    master_url = f"spark://127.0.0.1:{port}"
    daemons = [subprocess.Popen(
        [str(SPARK_CLASS), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
         "--port", str(port), "--webui-port", str(ui)],
        env=env, stdout=open(work / "master.log", "w"), stderr=subprocess.STDOUT,
    )]
    for i in range(2):
        daemons.append(subprocess.Popen(
            [str(SPARK_CLASS), "org.apache.spark.deploy.worker.Worker", master_url, "--host", "127.0.0.1",
             "--cores", "1", "--memory", "2g", "--webui-port", str(free_port()),
             "--work-dir", str(work / f"worker-{i}")],
            env=env, stdout=open(work / f"worker-{i}.log", "w"), stderr=subprocess.STDOUT,
        ))
    try:
        deadline = time.time() + 120
        while True:
            try:
                state = json.load(urllib.request.urlopen(f"http://127.0.0.1:{ui}/json", timeout=2))
                if sum(w["state"] == "ALIVE" for w in state["workers"]) == 2:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"standalone cluster did not start; logs in {work}")
            time.sleep(1)
        yield master_url, work
    finally:
        for daemon in daemons:
            daemon.terminate()
        for daemon in daemons:
            daemon.wait(timeout=60)


def test_submit_runs_the_job_on_a_standalone_cluster(standalone_cluster, tmp_path):
    master_url, work = standalone_cluster
    env = {
        **os.environ,
        "SPARK_MASTER": master_url,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYTHON": sys.executable,
        "SPARK_SUBMIT_ARGS": "--executor-memory 1g --conf spark.driver.host=127.0.0.1",
    }
    done = subprocess.run(
        ["scripts/submit.sh", "conf/local.toml", "--output", str(tmp_path / "out")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "succeeded: 300 rows" in done.stdout
    table = pd.read_parquet(tmp_path / "out" / "table")
    assert len(table) == 300 and "text_dp" in table.columns
    # The executors ran in the workers' directories, with the shipped environment.
    unpacked = list((work).glob("worker-*/app-*/*/dp_spark_env/bin/python"))
    assert unpacked, "no executor unpacked the environment archive"
