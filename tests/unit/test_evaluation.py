"""Features, reconstruction rates, metrics, comparisons at equal privacy,
plot and report of the evaluation (no Spark)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from dp_spark.audit import sampled_outputs
from dp_spark.embeddings import Embeddings
from dp_spark.evaluation import (
    DrawCache,
    _signed,
    accuracy,
    compare_at_equal,
    comparisons,
    label_epsilons,
    labels_imbalanced,
    macro_f1,
    mean_embeddings,
    plot,
    report,
    summarise,
    text_privacy,
    word_counts,
)
from dp_spark.mechanisms import build_mechanism
from dp_spark.tokenize import Vocabulary
from tests.conftest import clustered_embeddings


def test_metrics():
    labels = np.array([0, 0, 1, 1, 1])
    predictions = np.array([0, 1, 1, 1, 0])
    assert accuracy(labels, predictions) == pytest.approx(0.6)
    # class 0: precision 1/2, recall 1/2 -> 0.5; class 1: 2/3, 2/3 -> 0.667
    assert macro_f1(labels, predictions) == pytest.approx((0.5 + 2 / 3) / 2)
    assert macro_f1(np.array([0, 0]), np.array([1, 1])) == 0.0
    assert not labels_imbalanced({"0": 1500, "1": 1500}) and labels_imbalanced({"ham": 4825, "spam": 747})


def test_mean_embeddings_and_word_counts_read_words_as_the_perturber_does():
    vocabulary = Vocabulary(np.array(["the", "cat", "dog"]))
    vectors = np.array([[1, 0], [0, 2], [4, 4]], dtype=np.float32)
    strings = pa.array(["The cat", None, "", "cat 42 dog zzz", "zzz"])
    means = mean_embeddings(strings, vocabulary, vectors).tolist()
    # case folded, numbers are entities, words outside the vocabulary are left out, rows without any get zeros
    assert means == [[0.5, 1.0], [0.0, 0.0], [0.0, 0.0], [2.0, 3.0], [0.0, 0.0]]
    words, counts = word_counts(strings, vocabulary)
    assert words.tolist() == [0, 1, 2] and counts.tolist() == [1, 2, 1]


@pytest.fixture(scope="module")
def embeddings() -> Embeddings:
    return clustered_embeddings(200, 3)


def zipf_words(count: int) -> tuple[np.ndarray, np.ndarray]:
    words = np.arange(0, 200, 200 // count)[:count]
    return words, np.round(1000 / np.arange(1, count + 1)).astype(np.int64)


def test_text_privacy_at_the_limits(embeddings):
    words, counts = zipf_words(20)
    # epsilon -> 0: every output is equally likely from every word; the best guess is the most frequent word
    uniform = text_privacy(build_mechanism("santext", embeddings, epsilon=1e-9), words, counts, draws=10)
    assert uniform.reconstruction == pytest.approx(counts.max() / counts.sum())
    assert uniform.n_w == pytest.approx(1 / embeddings.size)
    # epsilon -> infinity: the output is the word
    certain = text_privacy(build_mechanism("santext", embeddings, epsilon=1e4), words, counts, draws=10)
    assert (certain.n_w, certain.reconstruction) == (pytest.approx(1.0), pytest.approx(1.0))
    assert certain.method == "exact" and certain.half_draws_reconstruction is None


def test_sampled_privacy_converges_to_the_exact_figures_from_below(embeddings, tmp_path):
    words, counts = zipf_words(40)
    mechanism = build_mechanism("tem", embeddings, epsilon=3.0)
    exact = text_privacy(mechanism, words, counts, draws=0, method="exact")
    many = text_privacy(mechanism, words, counts, draws=4000, method="sampled", cache_dir=tmp_path)
    few = text_privacy(mechanism, words, counts, draws=100, method="sampled", cache_dir=tmp_path)
    assert 0.2 < exact.n_w < exact.reconstruction < 0.9  # the adversary beats guessing the output itself
    assert many.n_w == pytest.approx(exact.n_w, abs=0.01)
    assert many.reconstruction == pytest.approx(exact.reconstruction, abs=0.005)
    # with fewer draws the adversary's rule is poorer, and leave-one-out never credits it with what it
    # overfits: the estimate rises towards the exact rate with the draws
    assert few.half_draws_reconstruction < few.reconstruction < many.reconstruction
    assert exact.reconstruction - few.reconstruction > 0.01


def test_draws_are_cached_per_word(embeddings, tmp_path):
    words, _ = zipf_words(10)
    mechanism = build_mechanism("mlap", embeddings, epsilon=2.0)
    first = DrawCache(mechanism, 50, cache_dir=tmp_path).outputs(words[:6])
    cache = DrawCache(mechanism, 50, cache_dir=tmp_path)
    assert sorted(cache.known) == sorted(words[:6].tolist())
    # keyed draws: a word gets the same draws whichever words it is drawn with
    assert np.array_equal(cache.outputs(words)[:6], first)
    assert np.array_equal(cache.outputs(words), sampled_outputs(mechanism, words, 50, 0))


def points(challenger_offset, challenger_level=0.3):
    rows = []
    for seed in range(1, 6):
        noise = 0.002 * seed
        for model in ("bag_of_words", "embeddings"):
            for epsilon, level, acc in ((5, 0.1, 0.60), (8, 0.5, 0.70), (10, 0.8, 0.75)):
                rows.append(("d", model, "mlap", epsilon, seed, acc + noise, acc + noise, level, level, level,
                             "pure", epsilon, "euclidean"))
            wobble = 0.01 * (-1) ** seed  # differences vary by seed
            rows.append(("d", model, "tgumbel", 100, seed, 0.65 + challenger_offset + noise + wobble, 0.0,
                         challenger_level, challenger_level, challenger_level, "none", np.nan, None))
            rows.append(("d", model, "original", np.inf, seed, 0.8, 0.8, 1.0, 1.0, 1.0, "-", np.nan, None))
    return pd.DataFrame(rows, columns=["dataset", "model", "mechanism", "epsilon", "seed", "accuracy", "macro_f1",
                                       "nw_vocabulary_median", "nw_text_mean", "reconstruction_rate", "guarantee",
                                       "guarantee_epsilon", "guarantee_metric"])


def test_paired_comparison_interpolates_the_baseline_at_equal_privacy():
    for measure in ("nw_text", "reconstruction"):
        found = compare_at_equal(points(0.05), "tgumbel", "mlap", measure, "bag_of_words", "accuracy")
        row = found.table.iloc[0]
        # mlap at level 0.3: halfway between 0.60 and 0.70 -> 0.65; tgumbel 0.70
        assert row["difference"] == pytest.approx(0.05 - 0.002) and row["seeds"] == 5
        assert row["ci_low"] > 0 and row["outcome"] == "wins"
        assert found.sentence().startswith("wins at every compared epsilon (100)")
    undecided = compare_at_equal(points(0.0), "tgumbel", "mlap", "nw_text", "embeddings", "accuracy")
    assert undecided.table["outcome"].tolist() == ["interval includes zero"]
    assert "the 95% interval includes zero at every compared epsilon (100)" in undecided.sentence()
    worse = compare_at_equal(points(-0.05), "tgumbel", "mlap", "reconstruction", "embeddings", "accuracy")
    assert worse.table["outcome"].tolist() == ["loses"]
    # an interval end just below zero keeps its sign: "loses" never shows beside "+0.000"
    assert (_signed(-0.0002), _signed(-0.0), _signed(0.0123)) == ("-0.0002", "+0.000", "+0.012")


def test_points_outside_the_baseline_range_are_not_compared():
    found = compare_at_equal(points(0.05, challenger_level=0.95), "tgumbel", "mlap", "nw_text", "bag_of_words",
                             "accuracy")
    assert found.table.empty
    assert found.sentence() == ("not compared: tgumbel's N_w over the text (0.95-0.95) lies outside the range "
                                "mlap's grid covers (0.1-0.8).")


def test_booked_guarantees_are_matched_on_log_epsilon_in_one_metric_only():
    data = points(0.0)
    assert compare_at_equal(data, "tgumbel", "mlap", "guarantee", "bag_of_words", "accuracy").reason == \
        "tgumbel books no guarantee"
    challenger = data["mechanism"] == "tgumbel"
    data.loc[challenger, ["guarantee", "guarantee_epsilon", "guarantee_metric"]] = ["pure", 6.0, "euclidean"]
    row = compare_at_equal(data, "tgumbel", "mlap", "guarantee", "bag_of_words", "accuracy").table.iloc[0]
    expected = 0.60 + 0.10 * np.log(6 / 5) / np.log(8 / 5)
    assert row["baseline_value"] == pytest.approx(expected + 0.006) and row["level"] == 6.0
    data.loc[challenger, "guarantee_metric"] = "list position"
    assert compare_at_equal(data, "tgumbel", "mlap", "guarantee", "bag_of_words", "accuracy").reason == \
        "tgumbel's epsilon is per unit of list position, mlap's per unit of euclidean"


def test_summary_report_and_plot():
    data = points(0.05)
    summary = summarise(data)
    assert set(summary["seeds"]) == {5} and set(summary["model"]) == {"bag_of_words", "embeddings"}
    found = comparisons(data, "mlap", "accuracy")
    assert len(found) == 3 * 2  # three measures, two models
    settings = {
        "command": "c", "rows": 100, "dropped": 2, "text_columns": ("title", "description"),
        "class_shares": {"0": 0.5, "1": 0.5}, "split_column": "split", "test_rows": 20, "test_fraction": 0.2,
        "seeds": [1, 2, 3, 4, 5], "perturb_test": False, "bag_of_words": "bow", "logistic": "lr",
        "embeddings": "e", "text_words": 500, "coverage": 0.77, "nw_sample": 300, "nw_draws": 100,
        "exact": [], "sampled_rises": {"mlap": 0.03, "tgumbel": 0.004}, "draws": 200, "baseline": "mlap",
        "metric": "accuracy",
        "metrics": ("accuracy",),
    }
    text = report("news", summary, found, settings)
    assert text.startswith("# Utility evaluation: news")
    assert "held out" not in text and "the seeds vary only the noise" in text
    assert "title + description (joined with a space" in text and "2 without a label or any text" in text
    assert "tgumbel vs mlap, equal N_w over the text, bag of words**: wins at every" in text
    alone = summary[summary["mechanism"] != "tgumbel"]
    text = report("news", alone, comparisons(data[data["mechanism"] != "tgumbel"], "mlap", "accuracy"),
                  {**settings, "sampled_rises": {"mlap": 0.03}})
    assert "Only mlap evaluated" in text and "## At equal" not in text and "tgumbel" not in text
    png = plot(summary, "title", ("accuracy", "macro_f1"))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_epsilon_labels_never_overlap():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4), dpi=110)
    # tgumbel's points lie almost on top of each other; mlap's spread out
    marks = [(0.15 + 0.005 * i, 0.69 + 0.003 * i, 0.02, epsilon, "tgumbel") for i, epsilon in enumerate((100, 200, 400))]
    marks += [(0.16, 0.64, 0.01, 6.0, "mlap"), (0.17, 0.66, 0.03, 7.0, "mlap"), (0.5, 0.7, 0.02, 8.0, "mlap")]
    axis.set_xlim(0, 1)
    axis.set_ylim(0.55, 0.8)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    label_epsilons(axis, marks, {"tgumbel": "C1", "mlap": "C0"}, renderer)
    texts = [t.get_text() for t in axis.texts]
    assert sorted(texts) == ["100, 200, 400", "6", "7", "8"]
    boxes = [t.get_window_extent(renderer) for t in axis.texts]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    plt.close(figure)
