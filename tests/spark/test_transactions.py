"""Runs as transactions, tried for real in separate driver processes: a
driver killed mid-run, two runs racing for one output root, and private text
through the failure paths, grepped for in every log, event log and file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from dp_spark.ledger_store import LedgerStore

MARKER = "MARKER-91c4-private-text"


def write_config(tmp_path, embeddings_files, source, extra_input=""):
    vectors, words = embeddings_files
    path = tmp_path / "job.toml"
    path.write_text(
        f'[input]\npath = "{source}"\ndataset = "killed"\n{extra_input}\n'
        f'[output]\nroot = "{tmp_path / "out"}"\n'
        f'[embeddings]\nsource = "npy"\npath = "{vectors}"\nvocabulary = "{words}"\n'
        '[job]\nid_column = "id"\n'
        '[[columns]]\nname = "text"\nmechanism = "mlap"\nepsilon = 12.0\n'
    )
    return path


@pytest.fixture
def dataset(tmp_path):
    frame = pd.DataFrame({"id": range(20_000), "text": ["the good movie was long and the actors were fine"] * 20_000})
    frame.to_parquet(tmp_path / "input.parquet")
    return tmp_path / "input.parquet"


def driver(config, *flags, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "dp_spark", "perturb", "--config", str(config), *flags],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", **(env or {})},
    )


def test_a_driver_killed_while_writing_leaves_nothing_live_and_the_next_run_recovers(
        spark, tmp_path, embeddings_files, dataset):
    config = write_config(tmp_path, embeddings_files, dataset)
    killed = driver(config)
    for line in killed.stderr:
        if "perturb and write table" in line:
            time.sleep(3)  # inside the Spark write
            os.kill(killed.pid, signal.SIGKILL)
            break
    killed.wait(timeout=120)
    out = tmp_path / "out"
    (record,) = LedgerStore(str(out / "ledger")).runs().values()
    assert record["status"] == "pending"  # counted as released until someone knows better
    assert not (out / "table").exists()
    following = driver(config)
    stdout, stderr = following.communicate(timeout=900)
    assert following.returncode == 0, stderr[-3000:]
    assert "had stopped half-way: rolled back" in stderr
    statuses = {run: r["status"] for run, r in LedgerStore(str(out / "ledger")).runs().items()}
    assert sorted(statuses.values()) == ["committed", "rolled_back"]
    manifests = {json.loads(p.read_text())["status"] for p in (out / "manifests").glob("*.json")}
    assert manifests == {"abandoned", "succeeded"}
    assert not [p for p in out.iterdir() if p.name.startswith("_staging")]
    assert len(pd.read_parquet(out / "table")) == 20_000


def test_two_runs_racing_for_one_root_never_both_release(spark, tmp_path, embeddings_files, dataset):
    """Regression: both passed the ledger check and booked 12 each while 24 was released."""
    config = write_config(tmp_path, embeddings_files, dataset)
    runs = [driver(config), driver(config)]
    outcomes = [run.communicate(timeout=900) for run in runs]
    codes = sorted(run.returncode for run in runs)
    assert codes in ([0, 3], [0, 4]), [o[1][-2000:] for o in outcomes]
    committed = [r for r in LedgerStore(str(tmp_path / "out" / "ledger")).runs().values()
                 if r["status"] == "committed"]
    assert len(committed) == 1


def test_private_text_reaches_no_log_event_log_or_file_on_any_failure_path(tmp_path, embeddings_files):
    """Malformed CSV and JSON records (FAILFAST), a null row key and
    duplicate row keys, each with a marker in the text: no error message,
    log line, Spark event log entry or output file may repeat it."""
    vectors, words = embeddings_files
    events = tmp_path / "events"
    events.mkdir()
    cases = {
        "csv": ("csv", "id INT, text STRING", f"1\tthe good movie\n{MARKER}\t{MARKER} again\n",
                '[input.options]\nsep = "\\t"\nmode = "FAILFAST"\n'),
        "json": ("json", "id INT, text STRING", f'{{"id": 1, "text": "fine"}}\n{{"id": 2, "text": "{MARKER}\n',
                 '[input.options]\nmode = "FAILFAST"\n'),
        "null-id": ("json", "id INT, text STRING", f'{{"id": 1, "text": "{MARKER}"}}\n{{"text": "{MARKER}"}}\n', ""),
        "duplicate-id": ("json", "id INT, text STRING",
                         f'{{"id": 1, "text": "{MARKER}"}}\n{{"id": 1, "text": "{MARKER}"}}\n', ""),
    }
    script = ["import sys", "from dp_spark.cli import main", "codes = []"]
    for name, (fmt, schema, content, options) in cases.items():
        data = tmp_path / f"{name}.{fmt}"
        data.write_text(content)
        config = tmp_path / f"{name}.toml"
        config.write_text(
            f'[input]\npath = "{data}"\nformat = "{fmt}"\nschema = "{schema}"\n{options}'
            f'[output]\nroot = "{tmp_path / ("out-" + name)}"\n'
            f'[embeddings]\nsource = "npy"\npath = "{vectors}"\nvocabulary = "{words}"\n'
            '[job]\nid_column = "id"\n[[columns]]\nname = "text"\nmechanism = "mlap"\nepsilon = 12.0\n'
        )
        script.append(f"codes.append(main(['perturb', '--config', '{config}']))")
    script.append("print('CODES', codes)")
    done = subprocess.run(
        [sys.executable, "-c", "\n".join(script)], capture_output=True, text=True, timeout=900,
        env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1",
             "PYSPARK_SUBMIT_ARGS": f"--conf spark.eventLog.enabled=true --conf spark.eventLog.compress=false "
                                    f"--conf spark.eventLog.dir=file://{events} "
                                    "pyspark-shell"},
    )
    assert "CODES [2, 2, 2, 2]" in done.stdout, done.stderr[-4000:]
    assert MARKER not in done.stdout and MARKER not in done.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.endswith((".csv", ".json", ".toml"))]
    assert any(events in p.parents for p in written), "no event log was written"
    for path in written:
        assert MARKER.encode() not in path.read_bytes(), path
