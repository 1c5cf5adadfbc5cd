"""N_w / S_w measurement, sampling, bisection, plot and report (no Spark)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from dp_spark.calibration import Refusal, bracket, describe_crossing, plot, report, summary_table
from dp_spark.embeddings import Embeddings
from dp_spark.index import build_neighbour_table
from dp_spark.mechanisms import build_mechanism
from dp_spark.mechanisms.tgumbel import minimum_epsilon
from dp_spark.stats import (
    bisect_epsilon,
    frequency_band,
    plausible_deniability,
    stratified_sample,
    summarize,
)
from tests.conftest import clustered_embeddings


def two_words(distance: float) -> Embeddings:
    return Embeddings.from_arrays(["a", "b"], np.array([[0.0], [distance]], dtype=np.float32))


def mlap_two_word_survival(epsilon: float, distance: float) -> float:
    """1-D Laplace noise keeps the word unless it crosses the midpoint towards the other."""
    return 1 - 0.5 * math.exp(-epsilon * distance / 2)


@pytest.mark.parametrize("epsilon", [0.5, 1.0, 3.0])
def test_nw_matches_closed_form_for_two_words(epsilon):
    mechanism = build_mechanism("mlap", two_words(2.0), epsilon=epsilon)
    draws = 40_000
    n_w, s_w = plausible_deniability(mechanism, np.array([0, 1]), draws)
    expected = mlap_two_word_survival(epsilon, 2.0)
    standard_error = math.sqrt(expected * (1 - expected) / draws)
    assert np.all(np.abs(n_w - expected) < 4 * standard_error)
    assert s_w.tolist() == [2, 2]


def test_tgumbel_with_k_always_zero_keeps_every_word():
    """With two words, lambda = ln(|V| - 1) = 0: k = 0 and the output is w."""
    embeddings = two_words(3.0)
    table = build_neighbour_table(embeddings, 1)
    epsilon = 2 * minimum_epsilon(2, table.min_distance)
    mechanism = build_mechanism("tgumbel", embeddings, epsilon=epsilon, neighbours=table)
    n_w, s_w = plausible_deniability(mechanism, np.array([0, 1]), 500)
    assert n_w.tolist() == [1.0, 1.0] and s_w.tolist() == [1, 1]


def test_nw_is_monotone_in_epsilon_word_by_word_for_mlap():
    """Common random numbers: each word's N_w never falls as epsilon grows."""
    embeddings = clustered_embeddings(150, 3)
    words = np.arange(0, 150, 3)
    curves = np.array([
        plausible_deniability(build_mechanism("mlap", embeddings, epsilon=e), words, 200)[0]
        for e in (0.5, 1, 2, 4, 8, 16)
    ])
    assert np.all(np.diff(curves, axis=0) >= 0)
    assert curves[-1].mean() > curves[0].mean() + 0.3


def test_bisection_finds_closed_form_epsilon():
    target = 0.8
    exact = -2 * math.log(2 * (1 - target)) / 2.0  # solves 1 - e^(-eps d / 2) / 2 = target for d = 2
    found = bisect_epsilon(lambda e: mlap_two_word_survival(e, 2.0), target, 0.01, 100.0)
    assert found == pytest.approx(exact, rel=0.01)
    assert bisect_epsilon(lambda e: 0.3, target, 1.0, 10.0) is None


def test_bisection_on_sampled_survival_is_within_sampling_error():
    mechanism_at = lambda e: build_mechanism("mlap", two_words(2.0), epsilon=e)  # noqa: E731
    estimate = lambda e: float(np.median(plausible_deniability(mechanism_at(e), np.array([0, 1]), 20_000)[0]))  # noqa: E731
    found = bisect_epsilon(estimate, 0.8, 0.1, 10.0)
    exact = -math.log(0.4)
    assert found == pytest.approx(exact, rel=0.05)


def test_stratified_sample_and_bands():
    sample = stratified_sample(100_000, 999, seed=1)
    assert len(sample) == len(np.unique(sample)) == 999 and np.all(np.diff(sample) > 0)
    bands = pd.Series(frequency_band(sample)).value_counts().to_dict()
    assert bands == {"frequent": 333, "mid": 333, "rare": 333}
    small = stratified_sample(500, 1000)
    assert small.tolist() == list(range(500))
    assert frequency_band(np.array([0, 999, 1000, 9999, 10000])).tolist() == [
        "frequent", "frequent", "mid", "mid", "rare"]


def test_summarize():
    s = summarize(np.arange(101))
    assert s["mean"] == 50 and s["p5"] == 5 and s["p50"] == 50 and s["p95"] == 95


@pytest.fixture
def measured():
    rows = []
    for epsilon, level in ((1.0, 0.1), (5.0, 0.4), (10.0, 0.7), (20.0, 0.95)):
        for word in range(30):
            rows.append({"mechanism": "mlap", "epsilon": epsilon, "word_id": word,
                         "band": "frequent", "n_w": level, "s_w": int(10 / level)})
    return pd.DataFrame(rows)


def test_summary_plot_and_report(measured):
    refusals = [Refusal("tgumbel", 10.0, "epsilon=10 is below ... epsilon_min = 79.76")]
    summary = summary_table(measured, refusals, {})
    assert set(summary["status"]) == {"ok", "refused"}
    refused = summary[summary["status"] == "refused"].iloc[0]
    assert "epsilon_min" in refused["reason"]
    assert bracket(summary[summary["mechanism"] == "mlap"], 0.5) == (1.0, 20.0)
    png = plot(summary, {"tgumbel": 79.76})
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    crossing = describe_crossing("tgumbel", None, summary[summary["mechanism"] == "tgumbel"], 0.5, 79.76)
    assert "no valid epsilon in the grid" in crossing and "79.76" in crossing
    text = report(summary, {"mlap": "epsilon = 7.1", "tgumbel": crossing},
                  {"sample_size": 30, "draws": 10, "seed": 0, "embeddings": "x", "command": "c"}, 0.5)
    assert "**mlap**: epsilon = 7.1" in text and "refused: epsilon=10" in text
