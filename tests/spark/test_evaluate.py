"""The evaluate job end to end on a tiny synthetic labeled dataset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dp_spark.cli import main
from dp_spark.evaluation import accuracy
from dp_spark.spark.evaluate import labeled_splits, load_evaluation_config, pipeline

POSITIVE = "good great excellent love best happy nice better".split()
NEGATIVE = "bad worst poor wrong hard lost dead fear".split()
FILLER = "the movie was and it is a of film story".split()


@pytest.fixture
def evaluation_config(tmp_path, embeddings_files):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(160):
        label = i % 2
        words = list(rng.choice(NEGATIVE if label else POSITIVE, 2)) + list(rng.choice(FILLER, 4))
        rng.shuffle(words)
        rows.append(f"{' '.join(words)}\t{label}")
    (tmp_path / "data.tsv").write_text("\n".join(rows) + "\n")
    vectors, vocabulary = embeddings_files
    path = tmp_path / "evaluate.toml"
    path.write_text(
        f'[input]\npath = "{tmp_path / "data.tsv"}"\nformat = "csv"\nschema = "text STRING, label INT"\n'
        '[input.options]\nsep = "\\t"\nheader = false\n'
        f'[embeddings]\nsource = "npy"\npath = "{vectors}"\nvocabulary = "{vocabulary}"\n'
        '[evaluation]\ntest_fraction = 0.25\nseeds = [1]\nnw_sample = 60\nnw_draws = 20\n'
        '[evaluation.epsilons]\nmlap = [0.5, 1000000.0]\ntgumbel = [100000.0]\n'
    )
    return path


def test_evaluate_end_to_end(spark, tmp_path, evaluation_config, capsys):
    out = tmp_path / "evaluation"
    assert main(["evaluate", "--config", str(evaluation_config), "--output", str(out)]) == 0
    points = pd.read_parquet(out / "evaluation_points")
    original = points[points["mechanism"] == "original"].iloc[0]
    # epsilon -> infinity: the perturbation is the identity, the score the original one
    huge = points[(points["mechanism"] == "mlap") & (points["epsilon"] == 1e6)].iloc[0]
    assert huge["median_nw"] == 1.0
    assert (huge["accuracy"], huge["macro_f1"]) == (original["accuracy"], original["macro_f1"])
    assert original["accuracy"] > 0.9
    noisy = points[(points["mechanism"] == "mlap") & (points["epsilon"] == 0.5)].iloc[0]
    assert noisy["median_nw"] == 0.0 and noisy["accuracy"] < original["accuracy"]
    summary = pd.read_parquet(out / "evaluation_summary")
    assert set(summary["mechanism"]) == {"original", "mlap", "tgumbel"}
    assert (out / "evaluation.png").read_bytes().startswith(b"\x89PNG")
    report = (out / "evaluation.md").read_text()
    assert "Does truncated Gumbel beat multivariate Laplace" in report


def test_original_score_equals_the_pipeline_trained_directly(spark, tmp_path, evaluation_config):
    out = tmp_path / "evaluation"
    assert main(["evaluate", "--config", str(evaluation_config), "--output", str(out)]) == 0
    config, settings = load_evaluation_config(str(evaluation_config))
    df = spark.read.options(sep="\t", header=False).schema("text STRING, label INT").csv(config.input.path)
    df = df.rdd.zipWithIndex().map(lambda p: (*p[0], p[1])).toDF(["text", "label", "row_id"])
    train, test = labeled_splits(df, settings, 1)
    rows = pipeline(settings).fit(train).transform(test).select("_label", "prediction").collect()
    direct = accuracy(np.array([r[0] for r in rows]), np.array([r[1] for r in rows]))
    points = pd.read_parquet(out / "evaluation_points")
    assert points.query("mechanism == 'original'")["accuracy"].iloc[0] == direct


def test_evaluation_config_errors(tmp_path):
    from dp_spark.config import ConfigError

    bad = tmp_path / "bad.toml"
    bad.write_text('[input]\npath = "x"\n[evaluation]\n[evaluation.epsilons]\nlaplace = [1]\n')
    with pytest.raises(ConfigError, match="mechanism must be one of"):
        load_evaluation_config(str(bad))
    bad.write_text('[input]\npath = "x"\n')
    with pytest.raises(ConfigError, match=r"missing section \[evaluation\]"):
        load_evaluation_config(str(bad))
