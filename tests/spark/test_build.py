"""The neighbour table found by Spark tasks: the driver's table exactly
(flat), an approximate IVF table marked as such, and ``build --spark``
writing an artifact that the perturb job then uses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dp_spark.artifact import artifact_id, open_local
from dp_spark.cli import main
from dp_spark.embeddings import Embeddings
from dp_spark.errors import ConfigError
from dp_spark.index import build_neighbour_table
from dp_spark.spark.build import neighbour_table_on_spark, table_plan


@pytest.fixture(scope="module")
def embeddings() -> Embeddings:
    return Embeddings.default(2000)


def test_slices_are_whole_batches_covering_every_word_once():
    plan = table_plan(2000, "flat", slices=3, batch_size=250)
    ranges = [plan.slice_rows(n) for n in range(plan.slices)]
    assert plan.slices == 3 and ranges == [(0, 750), (750, 1500), (1500, 2000)]
    assert table_plan(2000, "flat", slices=50, batch_size=250).slices == 8  # at most one per batch
    assert table_plan(999_999).search == "flat" and table_plan(1_000_000).search == "ivf"
    with pytest.raises(ConfigError, match="--slices"):
        table_plan(2000, slices=0)


@pytest.mark.e2e
def test_the_distributed_flat_table_is_the_drivers_table(spark, embeddings):
    expected = build_neighbour_table(embeddings, 16, batch_size=250)
    plan = table_plan(embeddings.size, "flat", slices=3, batch_size=250)
    table = neighbour_table_on_spark(spark, embeddings, 16, plan)
    assert table.ids.dtype == np.int32 and table.distances.dtype == np.float32
    np.testing.assert_array_equal(table.ids, expected.ids)
    np.testing.assert_array_equal(table.distances, expected.distances)
    assert table.diameter == expected.diameter and table.min_distance == expected.min_distance
    assert table.fingerprint == embeddings.fingerprint


def test_an_ivf_table_is_close_to_exact_and_says_it_is_approximate(spark, embeddings):
    exact = build_neighbour_table(embeddings, 8)
    plan = table_plan(embeddings.size, "ivf", slices=2, batch_size=500, nprobe=8)
    table = neighbour_table_on_spark(spark, embeddings, 8, plan)
    assert not (table.ids == np.arange(embeddings.size)[:, None]).any()  # self excluded
    assert (np.diff(table.distances, axis=1) >= 0).all()
    assert (table.distances >= exact.distances).all()  # never nearer than the truth
    recall = np.mean([len(set(a) & set(b)) / 8 for a, b in zip(table.ids, exact.ids)])
    assert recall > 0.9
    info = plan.description()
    assert info["exact"] is False and info["nprobe"] == 8
    assert artifact_id(embeddings.fingerprint, 8, info) != artifact_id(embeddings.fingerprint, 8)


@pytest.mark.e2e
def test_build_spark_writes_the_artifact_the_perturb_job_uses(spark, tmp_path, embeddings_files, capsys,
                                                             monkeypatch):
    vectors, words = embeddings_files
    (tmp_path / "embeddings.toml").write_text(
        f'[embeddings]\nsource = "npy"\npath = "{vectors}"\nvocabulary = "{words}"\n[index]\nneighbours = 16\n')
    assert main(["build", "--spark", "--slices", "2", "--config", str(tmp_path / "embeddings.toml"),
                 "--output", str(tmp_path / "artifacts"), "--json"]) == 0
    built = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert built["neighbour_table"] == {"exact": True, "search": "flat", "built_on": "spark", "slices": 2,
                                        "batch_size": 4096,
                                        "threads": built["neighbour_table"]["threads"]}
    artifact = open_local(built["artifact"])
    artifact.verify()
    assert artifact.id == artifact_id(artifact.fingerprint, 16)  # the driver's build has the same id
    expected = build_neighbour_table(artifact.embeddings(), 16)
    np.testing.assert_array_equal(artifact.neighbour_table().ids, expected.ids)
    np.testing.assert_array_equal(artifact.neighbour_table().distances, expected.distances)

    monkeypatch.setenv("DP_SPARK_CACHE_DIR", str(tmp_path / "fresh-cache"))
    frame_path = tmp_path / "input.parquet"
    import pandas as pd

    pd.DataFrame({"id": range(20), "tokens": [["good", "film", "actors"]] * 20}).to_parquet(frame_path)
    config = tmp_path / "job.toml"
    config.write_text(
        f'[input]\npath = "{frame_path}"\ndataset = "built"\n[output]\nroot = "{tmp_path / "out"}"\n'
        f'[embeddings]\nartifact = "{built["artifact"]}"\n'
        '[[columns]]\nname = "tokens"\nmechanism = "tem"\nepsilon = 8.0\n'
    )
    assert main(["perturb", "--config", str(config), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["status"] == "succeeded" and summary["rows"] == 20
    manifest = json.loads(Path(summary["locations"]["manifest"]).read_text())
    assert manifest["artifact"]["id"] == built["id"]
    assert not (tmp_path / "fresh-cache" / "artifacts").exists()


def test_spark_only_flags_without_spark_are_one_line_errors(tmp_path, capsys):
    assert main(["build", "--slices", "4", "--output", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.count("dp-spark: error:") == 1 and "--spark" in err and "Traceback" not in err
