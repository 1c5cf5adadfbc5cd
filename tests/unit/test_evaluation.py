"""Metrics and the paired comparison at equal N_w (no Spark)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dp_spark.evaluation import accuracy, compare_at_equal_survival, macro_f1, summarise, verdict


def test_metrics():
    labels = np.array([0, 0, 1, 1, 1])
    predictions = np.array([0, 1, 1, 1, 0])
    assert accuracy(labels, predictions) == pytest.approx(0.6)
    # class 0: precision 1/2, recall 1/2 -> 0.5; class 1: 2/3, 2/3 -> 0.667
    assert macro_f1(labels, predictions) == pytest.approx((0.5 + 2 / 3) / 2)
    assert macro_f1(np.array([0, 0]), np.array([1, 1])) == 0.0


def points(challenger_offset):
    rows = []
    for seed in range(1, 6):
        noise = 0.002 * seed
        for epsilon, nw, acc in ((5, 0.1, 0.60), (8, 0.5, 0.70), (10, 0.8, 0.75)):
            rows.append(("d", "mlap", epsilon, seed, acc + noise, acc + noise, nw, nw))
        wobble = 0.01 * (-1) ** seed  # differences vary by seed
        rows.append(("d", "tgumbel", 100, seed, 0.65 + challenger_offset + noise + wobble, 0.0, 0.3, 0.3))
    return pd.DataFrame(rows, columns=["dataset", "mechanism", "epsilon", "seed", "accuracy", "macro_f1",
                                       "median_nw", "mean_nw"])


def test_paired_comparison_interpolates_the_baseline():
    comparison = compare_at_equal_survival(points(0.05), "tgumbel", "mlap")
    row = comparison.iloc[0]
    # mlap at N_w 0.3: halfway between 0.60 and 0.70 -> 0.65; tgumbel 0.70
    assert row["difference"] == pytest.approx(0.05 - 0.002) and row["seeds"] == 5
    assert row["ci_low"] > 0
    assert verdict(comparison, "tgumbel", "mlap").startswith("At equal median N_w, yes")
    assert "median N_w 0.30 to 0.30" in verdict(comparison, "tgumbel", "mlap")
    assert "not shown" in verdict(compare_at_equal_survival(points(0.0), "tgumbel", "mlap"), "tgumbel", "mlap")
    assert verdict(compare_at_equal_survival(points(-0.05), "tgumbel", "mlap"), "tgumbel", "mlap").startswith(
        "At equal median N_w, no")
    summary = summarise(points(0.05))
    assert set(summary["seeds"]) == {5}


def test_points_outside_the_baseline_range_are_not_compared():
    data = points(0.05)
    data.loc[data["mechanism"] == "tgumbel", "median_nw"] = 0.95
    assert compare_at_equal_survival(data, "tgumbel", "mlap").empty
    assert "were not compared" in verdict(pd.DataFrame(), "tgumbel", "mlap")
