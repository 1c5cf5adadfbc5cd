"""The calibrate job on local[2]: tables, refusals, plot, report, and the
Spark path agreeing with the pure one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dp_spark.cli import main
from dp_spark.config import EmbeddingsConfig
from dp_spark.embeddings import load_embeddings
from dp_spark.mechanisms import build_mechanism
from dp_spark.stats import plausible_deniability


def write_config(tmp_path, embeddings_files) -> Path:
    vectors, words = embeddings_files
    path = tmp_path / "calibrate.toml"
    path.write_text(
        f'[input]\npath = "unused"\n[output]\nroot = "unused"\n'
        f'[embeddings]\nsource = "npy"\npath = "{vectors}"\nvocabulary = "{words}"\n'
        f'[[columns]]\nname = "text"\nmechanism = "mlap"\nepsilon = 1.0\n'
    )
    return path


def test_calibrate_writes_tables_plot_and_report(spark, tmp_path, embeddings_files, capsys):
    config = write_config(tmp_path, embeddings_files)
    out = tmp_path / "calibration"
    assert main(["calibrate", "--mechanisms", "tgumbel,mlap", "--epsilons", "2,5,10,20,1000",
                 "--sample", "60", "--draws", "40", "--config", str(config), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "median N_w = 0.5, mlap: epsilon =" in printed
    words = pd.read_parquet(out / "calibration_words")
    summary = pd.read_parquet(out / "calibration_summary")
    assert set(words["mechanism"]) == {"tgumbel", "mlap"}
    assert len(words[words["mechanism"] == "mlap"]) == 5 * 60
    refused = summary[summary["status"] == "refused"]
    assert set(refused["mechanism"]) == {"tgumbel"} and set(refused["epsilon"]) == {2.0, 5.0, 10.0, 20.0}
    assert refused["reason"].str.contains("epsilon_min").all()
    mlap = summary[(summary["mechanism"] == "mlap") & (summary["band"] == "all")].sort_values("epsilon")
    assert np.all(np.diff(mlap["nw_p50"]) >= 0) and np.all(np.diff(mlap["nw_mean"]) > 0)
    assert set(summary["band"]) == {"all", "frequent", "mid"}  # 5,000 words: no rare band
    assert (out / "calibration_words.csv").is_file() and (out / "calibration_summary.csv").is_file()
    png = (out / "calibration.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    text = (out / "calibration.md").read_text()
    assert "## Epsilon for median N_w = 0.5" in text and "**tgumbel**" in text and "refused" in text


def test_spark_and_pure_paths_agree(spark, tmp_path, embeddings_files):
    config = write_config(tmp_path, embeddings_files)
    out = tmp_path / "calibration"
    assert main(["calibrate", "--mechanisms", "mlap", "--epsilons", "8", "--sample", "30",
                 "--draws", "25", "--seed", "3", "--config", str(config), "--output", str(out)]) == 0
    words = pd.read_parquet(out / "calibration_words").sort_values("word_id")
    vectors, vocabulary = embeddings_files
    embeddings = load_embeddings(EmbeddingsConfig(source="npy", path=str(vectors), vocabulary=str(vocabulary)))
    n_w, s_w = plausible_deniability(
        build_mechanism("mlap", embeddings, epsilon=8.0), words["word_id"].to_numpy(), 25, seed=3
    )
    np.testing.assert_array_equal(words["n_w"].to_numpy(), n_w)
    np.testing.assert_array_equal(words["s_w"].to_numpy(), s_w)


def test_perturb_job_reads_deniability_from_a_calibration_table(spark, tmp_path, embeddings_files, make_config):
    from dp_spark.spark.perturb import Seed, run

    config_path = write_config(tmp_path, embeddings_files)
    out = tmp_path / "calibration"
    assert main(["calibrate", "--mechanisms", "mlap", "--epsilons", "8", "--sample", "30",
                 "--draws", "25", "--config", str(config_path), "--output", str(out)]) == 0
    spark.createDataFrame([(1, "the movie was good")], "id long, text string").write.parquet(str(tmp_path / "in"))
    config = make_config(tmp_path / "in", [{"name": "text", "mechanism": "mlap", "epsilon": 8.0}],
                         job={"calibration_table": str(out / "calibration_summary")})
    result = run(spark, config, seed=Seed(b"s", "given"))
    row = pd.read_parquet(result.locations["privacy_stats"]).iloc[0]
    summary = pd.read_parquet(out / "calibration_summary").query("band == 'all'").iloc[0]
    assert row["deniability_source"].startswith("calibration table")
    assert row["nw_p50"] == summary["nw_p50"] and row["sw_mean"] == summary["sw_mean"]


def test_calibrate_runs_every_mechanism(spark, tmp_path, embeddings_files):
    config = write_config(tmp_path, embeddings_files)
    names = "mlap,tgumbel,kde,mahalanobis,vickrey,tem,santext,custext,diffractor"
    for extra, out in ((["--param", "kde.sampler=mh"], "plain"),
                       (["--param", "tgumbel.max_distance=3.0", "--param", "mlap.max_distance=6.0"], "truncated")):
        assert main(["calibrate", "--mechanisms", names, "--epsilons", "4,2000", "--sample", "30",
                     "--draws", "20", "--config", str(config), "--output", str(tmp_path / out), *extra]) == 0
        summary = pd.read_parquet(tmp_path / out / "calibration_summary")
        ok = summary[(summary["status"] == "ok") & (summary["band"] == "all")]
        assert set(ok["mechanism"]) == set(names.split(","))
        assert ok["nw_p50"].between(0, 1).all() and (ok["sw_p50"] >= 1).all()
    details = pd.read_parquet(tmp_path / "truncated" / "calibration_summary").query("mechanism == 'tgumbel' and status == 'ok'")
    assert details["details"].str.contains('"truncation": "distance"').all()


def test_calibrate_tunes_tgumbels_poisson_rate_for_a_target_survival(spark, tmp_path, embeddings_files, capsys):
    """tgumbel's N_w barely moves with epsilon; its Poisson rate is the knob,
    and calibration finds the rate for the target median N_w."""
    config = write_config(tmp_path, embeddings_files)
    assert main(["calibrate", "--mechanisms", "tgumbel", "--epsilons", "2000", "--sample", "40", "--draws", "40",
                 "--tune", "tgumbel.poisson_rate", "--target-nw", "0.3", "--config", str(config),
                 "--output", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    line = next(line for line in printed.splitlines() if "tgumbel poisson_rate" in line)
    rate = float(line.split("poisson_rate = ")[1].split()[0])
    assert "gives median N_w = 0.3 at epsilon 2000" in line and 0.01 < rate < 1000


def test_calibrate_weights_survival_by_the_tokens_of_a_text(spark, tmp_path, embeddings_files):
    """Band "text": N_w over the words of an input text, weighted by their
    tokens (frequent words sit in denser regions: it differs from the
    vocabulary sample's)."""
    vectors, words = embeddings_files
    pd.DataFrame({"review": ["the movie was the best of the year", "the actors were good"] * 50}).to_parquet(
        tmp_path / "text.parquet")
    config = tmp_path / "calibrate.toml"
    config.write_text(f'[input]\npath = "{tmp_path / "text.parquet"}"\n'
                      f'[embeddings]\nsource = "npy"\npath = "{vectors}"\nvocabulary = "{words}"\n')
    out = tmp_path / "out"
    assert main(["calibrate", "--mechanisms", "mlap", "--epsilons", "8", "--sample", "30", "--draws", "30",
                 "--config", str(config), "--text-column", "review", "--output", str(out)]) == 0
    summary = pd.read_parquet(out / "calibration_summary")
    (text,) = summary[summary["band"] == "text"].itertuples()
    assert text.words == 9 and text.text_tokens_covered == 1.0 and 0 <= text.nw_mean <= 1
    overall = summary[summary["band"] == "all"].iloc[0]
    assert text.nw_mean != overall["nw_mean"]
