"""The command line as a scheduler and a user meet it: one line and a
documented exit status for every error, nothing written before the input
and the config are known good, the seed never on the command line, --explain,
--json, --run-id retries."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from dp_spark.cli import main

SEED_HEX = "000102030405060708090a0b0c0d0e0f"


@pytest.fixture
def dataset(spark, tmp_path):
    frame = pd.DataFrame({"id": range(40), "rating": [i % 5 for i in range(40)],
                          "text": ["the movie was great and the actors were fine"] * 40,
                          "tokens": [["good", "film"]] * 40})
    frame.to_parquet(tmp_path / "input.parquet")
    return tmp_path / "input.parquet"


def write_config(tmp_path, dataset, embeddings_files, columns="", output="", extra=""):
    vectors, words = embeddings_files
    path = tmp_path / "job.toml"
    path.write_text(
        f'[input]\npath = "{dataset}"\ndataset = "cli"\n[output]\nroot = "{tmp_path / "out"}"\n{output}\n'
        f'[embeddings]\nsource = "npy"\npath = "{vectors}"\nvocabulary = "{words}"\n'
        '[job]\nid_column = "id"\n'
        + (columns or '[[columns]]\nname = "text"\nmechanism = "mlap"\nepsilon = 12.0\n') + extra
    )
    return path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("dp-spark: error:")]
    assert len(lines) == 1 and "Traceback" not in err and "\tat " not in err, err[-2000:]
    return lines[0]


@pytest.mark.e2e
def test_json_summary_seed_file_and_a_retried_run_id(spark, tmp_path, dataset, embeddings_files, capsys):
    config = write_config(tmp_path, dataset, embeddings_files)
    (tmp_path / "seed").write_text(SEED_HEX + "\n")
    flags = ["perturb", "--config", str(config), "--seed-file", str(tmp_path / "seed"), "--json", "--run-id", "r-1"]
    assert main(flags) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["status"] == "succeeded" and summary["run_id"] == "r-1" and summary["rows"] == 40
    manifest = json.loads(Path(summary["locations"]["manifest"]).read_text())
    assert manifest["seed_source"] == "file" and SEED_HEX not in json.dumps(manifest)
    assert main(flags) == 0  # the scheduler retries a run that succeeded: nothing happens
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["status"] == "already succeeded"


def test_a_backfill_with_the_same_secret_replays_and_a_fresh_seed_is_refused(
        spark, tmp_path, dataset, embeddings_files, capsys, monkeypatch):
    config = write_config(tmp_path, dataset, embeddings_files)
    monkeypatch.setenv("DP_SPARK_SEED", SEED_HEX)
    assert main(["perturb", "--config", str(config)]) == 0
    assert main(["perturb", "--config", str(config)]) == 0  # same secret: a replay
    monkeypatch.delenv("DP_SPARK_SEED")
    capsys.readouterr()
    assert main(["perturb", "--config", str(config)]) == 3
    assert "--seed-file or DP_SPARK_SEED" in one_line_error(capsys)


def test_explain_prints_the_plan_and_writes_nothing(spark, tmp_path, dataset, embeddings_files, capsys):
    config = write_config(tmp_path, dataset, embeddings_files)
    assert main(["perturb", "--config", str(config), "--explain", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["plan"]
    assert plan["columns"][0]["guarantee"] == "12-d_X, d = euclidean distance"
    assert plan["columns"][0]["total_after_run"] == "12 per token" and plan["row_key"] == "id:id"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case, exit_status, message", [
    ("missing input", 2, "the path does not exist"),
    ("schema typo", 2, "input.schema is not a valid DDL schema"),
    ("output root is a file", 2, "it is a file, not a directory"),
    ("unknown compression", 2, "output.options.compression = 'zstdx' is not a parquet codec"),
    ("csv output with an array column", 2, "output.format = 'csv' cannot hold column(s) tokens"),
    ("partition value of the wrong type", 2, "--partition rating=abc: column 'rating' has type bigint"),
    ("partition value with a slash", 2, "a partition value cannot contain '/'"),
    ("id column of struct type", 2, "id column 'id' has type struct"),
    ("output column overwrites another column", 2, "an input column it does not read"),
    ("bad mechanism parameter", 2, "job.toml: columns[0]: mechanism 'tem': beta must be in [0, 1], got 2.0"),
    ("no guarantee, not accepted", 3, "promises no privacy guarantee"),
    ("delta without its jars", 2, "output.format = 'delta': Spark has no such data source on its classpath"),
])
def test_user_errors_are_one_line_with_their_exit_status_and_write_nothing(
        spark, tmp_path, dataset, embeddings_files, capsys, case, exit_status, message):
    flags = []
    columns = ""
    output = ""
    extra = ""
    source = dataset
    if case == "missing input":
        source = tmp_path / "nowhere"
    elif case == "schema typo":
        extra = ""
        source = dataset
    elif case == "output root is a file":
        (tmp_path / "out").write_text("not a directory")
    elif case == "unknown compression":
        output = '[output.options]\ncompression = "zstdx"'
    elif case == "csv output with an array column":
        output = 'format = "csv"'
    elif case == "partition value of the wrong type":
        flags = ["--partition", "rating=abc"]
    elif case == "partition value with a slash":
        flags = ["--partition", "ds=2026/11"]
    elif case == "id column of struct type":
        pd.DataFrame({"id": [{"a": 1}], "text": ["x"]}).to_parquet(tmp_path / "struct.parquet")
        source = tmp_path / "struct.parquet"
    elif case == "output column overwrites another column":
        columns = '[[columns]]\nname = "text"\nmechanism = "mlap"\nepsilon = 12.0\noutput_column = "rating"\n'
    elif case == "bad mechanism parameter":
        columns = '[[columns]]\nname = "text"\nmechanism = "tem"\nepsilon = 5.0\nparams = { beta = 2.0 }\n'
    elif case == "delta without its jars":
        output = 'format = "delta"'
    elif case == "no guarantee, not accepted":
        columns = '[[columns]]\nname = "text"\nmechanism = "tgumbel"\nepsilon = 2000.0\n'
    config = write_config(tmp_path, source, embeddings_files, columns, output, extra)
    if case == "schema typo":
        text = config.read_text().replace('dataset = "cli"', 'dataset = "cli"\nformat = "json"\nschema = "id LONGG"')
        config.write_text(text)
    capsys.readouterr()
    assert main(["perturb", "--config", str(config), *flags]) == exit_status
    line = one_line_error(capsys)
    assert message in line, line
    out = tmp_path / "out"
    assert not out.is_dir() or not [p for p in out.iterdir() if p.name not in ("_lock",)], list(out.iterdir())


def test_a_malformed_record_names_its_file_and_never_its_content(spark, tmp_path, embeddings_files, capsys):
    marker = "MARKER-7f3a-private-text"
    (tmp_path / "data.tsv").write_text(f"1\tthe good movie\n{marker}\tan id that is not a number\n")
    vectors, words = embeddings_files
    config = tmp_path / "job.toml"
    config.write_text(
        f'[input]\npath = "{tmp_path / "data.tsv"}"\nformat = "csv"\nschema = "id INT, text STRING"\n'
        f'[input.options]\nsep = "\\t"\nmode = "FAILFAST"\n'
        f'[output]\nroot = "{tmp_path / "out"}"\n'
        f'[embeddings]\nsource = "npy"\npath = "{vectors}"\nvocabulary = "{words}"\n'
        '[[columns]]\nname = "text"\nmechanism = "mlap"\nepsilon = 12.0\n'
    )
    assert main(["perturb", "--config", str(config)]) == 2
    captured = capsys.readouterr()
    line = one_line_error_from(captured.err)
    assert "malformed record in" in line and "data.tsv" in line and "record 2" in line
    assert marker not in captured.err and marker not in captured.out
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert marker.encode() not in path.read_bytes(), path


def one_line_error_from(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("dp-spark: error:")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


@pytest.mark.e2e
def test_a_built_artifact_is_used_as_is_by_a_fresh_driver(spark, tmp_path, dataset, embeddings_files, capsys,
                                                          monkeypatch):
    """build once; a run on a fresh cache directory (every scheduled run on an
    ephemeral cluster) loads the artifact and builds no neighbour table."""
    vectors, words = embeddings_files
    (tmp_path / "embeddings.toml").write_text(
        f'[embeddings]\nsource = "npy"\npath = "{vectors}"\nvocabulary = "{words}"\n[index]\nneighbours = 32\n')
    assert main(["build", "--config", str(tmp_path / "embeddings.toml"), "--output", str(tmp_path / "artifacts"),
                 "--json"]) == 0
    built = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert built["words"] < 5000 and built["neighbours"] == 32
    monkeypatch.setenv("DP_SPARK_CACHE_DIR", str(tmp_path / "fresh-cache"))
    config = tmp_path / "job.toml"
    config.write_text(
        f'[input]\npath = "{dataset}"\ndataset = "cli"\n[output]\nroot = "{tmp_path / "out"}"\n'
        f'[embeddings]\nartifact = "{built["artifact"]}"\n'
        '[[columns]]\nname = "tokens"\nmechanism = "tem"\nepsilon = 8.0\n'
    )
    assert main(["perturb", "--config", str(config), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    manifest = json.loads(Path(summary["locations"]["manifest"]).read_text())
    assert manifest["artifact"]["id"] == built["id"]
    assert not (tmp_path / "fresh-cache" / "artifacts").exists()
