"""The evaluate job on tiny synthetic labeled datasets: two text columns end
to end from a config, a fixed split, and the input conveniences."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from dp_spark.classifier import BagOfWords, LogisticRegression
from dp_spark.cli import main
from dp_spark.config import InputConfig
from dp_spark.errors import ConfigError, InputError
from dp_spark.spark.evaluate import evaluate, labeled_data, load_evaluation_config
from dp_spark.spark.io import read_input

POSITIVE = "good great excellent love best happy nice better".split()
NEGATIVE = "bad worst poor wrong hard lost dead fear".split()
FILLER = "the movie was and it is a of film story".split()


def embeddings_section(embeddings_files) -> str:
    vectors, vocabulary = embeddings_files
    return f'[embeddings]\nsource = "npy"\npath = "{vectors}"\nvocabulary = "{vocabulary}"\n'


@pytest.fixture
def news_config(tmp_path, embeddings_files):
    """A title and a description per row, in a CSV whose quotes are escaped by doubling them."""
    rng = np.random.default_rng(0)
    lines = ["label,title,description"]
    for i in range(200):
        label = i % 2
        words = NEGATIVE if label else POSITIVE
        title = f'a ""{rng.choice(words)}"" {rng.choice(FILLER)}'
        description = " ".join([rng.choice(words), *rng.choice(FILLER, 3)])
        lines.append(f'{label},"{title}","{description}, {rng.choice(FILLER)}"')
    (tmp_path / "news.csv").write_text("\n".join(lines) + "\n")
    path = tmp_path / "evaluate.toml"
    path.write_text(
        f'[input]\npath = "{tmp_path / "news.csv"}"\nformat = "csv"\ndataset = "two columns"\n'
        'schema = "label INT, title STRING, description STRING"\n'
        '[input.options]\nheader = true\nescape = "\\""\nmode = "FAILFAST"\n'
        + embeddings_section(embeddings_files)
        + '[evaluation]\ntext_columns = ["title", "description"]\ntest_fraction = 0.25\nseeds = [1]\n'
        'nw_sample = 60\nnw_draws = 20\ndraws = 20\n'
        '[evaluation.epsilons]\nmlap = [0.5, 1000000.0]\ndiffractor = [1.0]\n'
    )
    return path


def test_two_text_columns_evaluate_from_a_config_with_both_models(spark, tmp_path, news_config, capsys):
    out = tmp_path / "evaluation"
    assert main(["evaluate", "--config", str(news_config), "--output", str(out)]) == 0
    points = pd.read_parquet(out / "evaluation_points")
    assert set(points["model"]) == {"bag_of_words", "embeddings"}
    assert set(points["mechanism"]) == {"original", "mlap", "diffractor"}
    original = points[points["mechanism"] == "original"].set_index("model")
    assert original.loc["bag_of_words", "accuracy"] > 0.9 and original.loc["embeddings", "accuracy"] > 0.9
    # epsilon -> infinity: the perturbation is the identity, both models score as on the original text
    huge = points[(points["mechanism"] == "mlap") & (points["epsilon"] == 1e6)].set_index("model")
    assert (huge["nw_text_mean"] == 1.0).all() and (huge["reconstruction_rate"] == 1.0).all()
    assert huge[["accuracy", "macro_f1"]].equals(original[["accuracy", "macro_f1"]])
    noisy = points[(points["mechanism"] == "mlap") & (points["epsilon"] == 0.5)].set_index("model")
    assert (noisy["nw_text_mean"] < 0.05).all()
    assert noisy.loc["bag_of_words", "accuracy"] < original.loc["bag_of_words", "accuracy"]
    diffractor = points[points["mechanism"] == "diffractor"].iloc[0]
    assert diffractor["guarantee"] == "pure" and diffractor["reconstruction_rate"] >= diffractor["nw_text_mean"]
    assert (out / "evaluation.png").read_bytes().startswith(b"\x89PNG")
    report = (out / "evaluation.md").read_text()
    assert report.startswith("# Utility evaluation: two columns")
    assert "text columns title + description" in report and "25% of each label held out" in report
    assert "**diffractor vs mlap, equal booked guarantee, bag of words**: not compared: diffractor's epsilon is " \
           "per unit of list position" in report
    assert "diffractor vs mlap, nw_text, averaged embeddings" in capsys.readouterr().out


def test_a_fixed_split_trains_the_original_models_once(spark, tmp_path, embeddings_files, monkeypatch):
    rng = np.random.default_rng(1)
    rows = [(" ".join([*rng.choice(NEGATIVE if i % 2 else POSITIVE, 2), *rng.choice(FILLER, 4)]), i % 2,
             "test" if i % 5 == 0 else "train") for i in range(160)]
    pd.DataFrame(rows, columns=["text", "label", "split"]).to_parquet(tmp_path / "data.parquet")
    path = tmp_path / "evaluate.toml"
    path.write_text(f'[input]\npath = "{tmp_path / "data.parquet"}"\n' + embeddings_section(embeddings_files)
                    + '[evaluation]\nsplit_column = "split"\nseeds = [1, 2]\nnw_sample = 30\nnw_draws = 10\n'
                    'draws = 10\n[evaluation.epsilons]\nmlap = [1000000.0]\n')
    config, settings = load_evaluation_config(str(path))
    result = evaluate(spark, config, settings, str(tmp_path / "out"), "fixed")
    points = result["results"].set_index(["mechanism", "model", "seed"])
    for model in ("bag_of_words", "embeddings"):
        assert points.loc[("original", model, 1), "accuracy"] == points.loc[("original", model, 2), "accuracy"]
    # the original text's bag of words scores as the same model trained directly on the split
    frame = pd.read_parquet(tmp_path / "data.parquet")
    train, test = frame[frame["split"] != "test"], frame[frame["split"] == "test"]
    words = BagOfWords.fit(pa.array(train["text"]), 16384)
    direct = LogisticRegression.fit(words.features(pa.array(train["text"])), train["label"].to_numpy(), 2)
    predictions = direct.predict(words.features(pa.array(test["text"])))
    assert points.loc[("original", "bag_of_words", 1), "accuracy"] == (predictions == test["label"].to_numpy()).mean()
    report = (tmp_path / "out" / "evaluation.md").read_text()
    assert "the seeds vary only the noise" in report and "held out" not in report
    assert "Only mlap evaluated: there is no other mechanism to compare with." in report
    assert "## At equal" not in report
    # a split column that marks no row "test" leaves nothing to score on
    pd.DataFrame([(text, label, "train") for text, label, _ in rows],
                 columns=["text", "label", "split"]).to_parquet(tmp_path / "data.parquet")
    with pytest.raises(InputError, match="split column 'split' must mark some rows, not all, \"test\" \\(0 of 160"):
        labeled_data(spark, config, settings)
    # the models train on the driver: an input over its limit is refused before anything is perturbed
    monkeypatch.setattr("dp_spark.spark.evaluate.MAX_ROWS", 100)
    with pytest.raises(InputError, match="the input has 160 rows; the evaluation trains its models on the driver, "
                                         "on at most 100: evaluate a sample"):
        labeled_data(spark, config, settings)


def test_label_text_lines_and_doubled_quotes(spark, tmp_path):
    (tmp_path / "sst.txt").write_text("1 a great movie\n0\tbad , film  \n\nneg  awful\n")
    lines = read_input(spark, InputConfig(path=str(tmp_path / "sst.txt"), format="text",
                                          options={"line_format": "label_text"})).frame
    assert [tuple(r) for r in lines.collect()] == [("1", "a great movie"), ("0", "bad , film"), (None, None),
                                                   ("neg", "awful")]
    with pytest.raises(ConfigError, match="input.options.line_format = 'label_text'.*format 'csv'"):
        read_input(spark, InputConfig(path=str(tmp_path / "sst.txt"), format="csv",
                                      options={"line_format": "label_text"}))
    # A CSV escaping quotes by doubling them, read with Spark's default escape (a backslash)
    (tmp_path / "news.csv").write_text('label,title,description\n1,"Team wins","The ""home"" side won, again"\n')
    config = tmp_path / "evaluate.toml"
    config.write_text(f'[input]\npath = "{tmp_path / "news.csv"}"\nformat = "csv"\n'
                      'schema = "label INT, title STRING, description STRING"\n'
                      '[input.options]\nheader = true\nmode = "FAILFAST"\n'
                      '[evaluation]\ntext_columns = ["title", "description"]\n[evaluation.epsilons]\nmlap = [8]\n')
    parsed, settings = load_evaluation_config(str(config))
    with pytest.raises(InputError, match="malformed record in .*news.csv.*input.options.escape = '\"'"):
        labeled_data(spark, parsed, settings)


@pytest.mark.parametrize("evaluation, message", [
    ("[evaluation.epsilons]\nlaplace = [1]\n", "mechanism must be one of"),
    ('text_column = "a"\ntext_columns = ["b"]\n[evaluation.epsilons]\nmlap = [8]\n',
     "give text_column or text_columns, not both"),
    ("text_columns = []\n[evaluation.epsilons]\nmlap = [8]\n", "evaluation.text_columns must be a non-empty list"),
    ('baseline = "tem"\n[evaluation.epsilons]\nmlap = [8]\n', "evaluation.baseline must be one of"),
    ("seeds = [1, 1]\n[evaluation.epsilons]\nmlap = [8]\n", "evaluation.seeds must be a list of distinct integers"),
    ("[evaluation.epsilons]\nmlap = [8]\n[evaluation.params]\nmlap = { radius = 2 }\n",
     r"evaluation.params.mlap must be a table of mlap's parameters \(index_type, max_distance"),
])
def test_evaluation_config_errors_name_the_key(tmp_path, evaluation, message):
    bad = tmp_path / "bad.toml"
    bad.write_text('[input]\npath = "x"\n[evaluation]\n' + evaluation)
    with pytest.raises(ConfigError, match=message):
        load_evaluation_config(str(bad))
    bad.write_text('[input]\npath = "x"\n')
    with pytest.raises(ConfigError, match=r"missing section \[evaluation\]"):
        load_evaluation_config(str(bad))
