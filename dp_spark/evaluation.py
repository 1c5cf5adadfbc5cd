"""Utility evaluation: metrics, the comparison at equal plausible
deniability, plot and report (pure: numpy, pandas, matplotlib).

Mechanisms are compared at equal median N_w (how often a word survives),
not at equal epsilon, which buys different noise in different mechanisms.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    return float((labels == predictions).mean()) if len(labels) else float("nan")


def macro_f1(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Unweighted mean over classes of F1 (a class never predicted nor present
    does not count; one present but never predicted scores 0)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    scores = []
    for cls in np.union1d(labels, predictions):
        true_positive = np.sum((predictions == cls) & (labels == cls))
        predicted, actual = np.sum(predictions == cls), np.sum(labels == cls)
        precision = true_positive / predicted if predicted else 0.0
        recall = true_positive / actual if actual else 0.0
        scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return float(np.mean(scores)) if scores else float("nan")


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds of each (mechanism, epsilon) point."""
    grouped = results.groupby(["dataset", "mechanism", "epsilon"], sort=True)
    summary = grouped.agg(
        seeds=("seed", "nunique"),
        accuracy_mean=("accuracy", "mean"), accuracy_std=("accuracy", "std"),
        macro_f1_mean=("macro_f1", "mean"), macro_f1_std=("macro_f1", "std"),
        median_nw=("median_nw", "first"), mean_nw=("mean_nw", "first"),
    ).reset_index()
    return summary.fillna({"accuracy_std": 0.0, "macro_f1_std": 0.0})


# Two-sided 95% quantiles of Student's t by degrees of freedom (1-10), for
# the paired comparison over a handful of seeds.
T_975 = (12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23)


def compare_at_equal_survival(points: pd.DataFrame, challenger: str, baseline: str,
                              metric: str = "accuracy") -> pd.DataFrame:
    """For each epsilon of ``challenger``: per seed, the difference between its
    metric and the ``baseline``'s at the same median N_w (linear interpolation
    between the baseline's grid points of that seed: same split, so the
    comparison is paired); the mean difference, its standard error and a 95%
    interval. Points outside the baseline's N_w range are left out."""
    rows = []
    for epsilon, group in points[points["mechanism"] == challenger].groupby("epsilon", sort=True):
        differences, values, interpolated = [], [], []
        survival = float(group["median_nw"].iloc[0])
        for seed, row in group.set_index("seed").iterrows():
            base = points[(points["mechanism"] == baseline) & (points["seed"] == seed)]
            grid = base.groupby("median_nw")[metric].mean().sort_index()
            if len(grid) < 2 or not grid.index.min() <= survival <= grid.index.max():
                continue
            value = float(np.interp(survival, grid.index, grid.to_numpy()))
            values.append(row[metric])
            interpolated.append(value)
            differences.append(row[metric] - value)
        if not differences:
            continue
        n = len(differences)
        error = float(np.std(differences, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
        half_width = T_975[min(n - 1, len(T_975)) - 1] * error if n > 1 else float("nan")
        mean = float(np.mean(differences))
        rows.append({
            "epsilon": epsilon, "median_nw": survival, "seeds": n,
            f"{challenger}_{metric}": float(np.mean(values)),
            f"{baseline}_{metric}_interpolated": float(np.mean(interpolated)),
            "difference": mean, "standard_error": error,
            "ci_low": mean - half_width, "ci_high": mean + half_width,
        })
    return pd.DataFrame(rows)


def plot(summary: pd.DataFrame, title: str) -> bytes:
    """PNG: accuracy and macro-F1 against median N_w, one curve per mechanism
    (error bars: standard deviation over seeds), original text as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.6), constrained_layout=True)
    original = summary[summary["mechanism"] == "original"]
    for axis, metric, label in zip(axes, ("accuracy", "macro_f1"), ("accuracy", "macro-F1")):
        for mechanism, rows in summary[summary["mechanism"] != "original"].groupby("mechanism", sort=True):
            rows = rows.sort_values("median_nw")
            axis.errorbar(rows["median_nw"], rows[f"{metric}_mean"], yerr=rows[f"{metric}_std"], marker="o",
                          capsize=3, label=mechanism)
            for row in rows.itertuples():
                axis.annotate(f"{row.epsilon:g}", (row.median_nw, getattr(row, f"{metric}_mean")),
                              textcoords="offset points", xytext=(4, -10), fontsize=7)
        if not original.empty:
            mean, std = original[f"{metric}_mean"].iloc[0], original[f"{metric}_std"].iloc[0]
            axis.axhline(mean, color="black", linestyle="--", label="original text")
            axis.axhspan(mean - std, mean + std, color="black", alpha=0.08)
        axis.set_xlabel("median N_w over the vocabulary (fraction of draws returning the word; labels: epsilon)")
        axis.set_ylabel(f"test {label}")
        axis.set_xlim(-0.03, 1.03)
        axis.grid(True, alpha=0.3)
    axes[0].legend(loc="best", fontsize=8)
    figure.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def verdict(comparison: pd.DataFrame, challenger: str, baseline: str) -> str:
    """One plain paragraph: does the challenger beat the baseline at equal N_w?"""
    if comparison.empty:
        return (f"{challenger} and {baseline} were not compared: {challenger}'s median N_w lies outside "
                f"the range {baseline}'s grid covers, so there is no {baseline} point at equal N_w.")
    better = comparison["ci_low"] > 0
    worse = comparison["ci_high"] < 0
    differences = comparison["difference"]
    if better.all():
        outcome = f"yes: {challenger} beats {baseline} at every compared point"
    elif worse.all():
        outcome = f"no: {challenger} is worse than {baseline} at every compared point"
    elif not better.any() and not worse.any():
        side = ("ahead" if (differences > 0).all() else "behind" if (differences < 0).all() else "on both sides")
        outcome = (f"not shown: {challenger} is {side} at the compared points, but every 95% interval "
                   "includes zero")
    else:
        outcome = (f"mixed: {challenger} is better at {int(better.sum())}, worse at {int(worse.sum())} and "
                   f"undecided at {int((~better & ~worse).sum())} point(s)")
    return (f"At equal median N_w, {outcome}. Mean accuracy difference {differences.mean():+.3f} "
            f"(from {differences.min():+.3f} to {differences.max():+.3f}), paired by seed (same split), "
            f"{int(comparison['seeds'].min())} seeds per point; a point counts when its 95% interval "
            "(Student's t) excludes zero. Compared only where both mechanisms have points: median N_w "
            f"{comparison['median_nw'].min():.2f} to {comparison['median_nw'].max():.2f}.")


def report(dataset: str, summary: pd.DataFrame, comparison: pd.DataFrame, text: str,
           settings: dict[str, Any]) -> str:
    lines = [
        f"# Utility evaluation: {dataset}",
        "",
        f"Command: `{settings['command']}`",
        "",
        f"Data: {settings['rows']} labeled rows, {settings['test_fraction']:.0%} held out per seed "
        f"(stratified by label), seeds {settings['seeds']}; training text perturbed"
        + (" and test text too" if settings["perturb_test"] else ", test text original")
        + f". Model: {settings['model']}. N_w: median over {settings['nw_sample']} vocabulary words x "
        f"{settings['nw_draws']} draws.",
        "",
        "## Does truncated Gumbel beat multivariate Laplace at equal plausible deniability?",
        "",
        text,
        "",
    ]
    if not comparison.empty:
        lines += ["| tgumbel epsilon | median N_w | tgumbel accuracy | mlap accuracy at that N_w | "
                  "difference (95% interval) |", "|---|---|---|---|---|"]
        for row in comparison.itertuples():
            lines.append(
                f"| {row.epsilon:g} | {row.median_nw:.3f} | {row.tgumbel_accuracy:.3f} "
                f"| {row.mlap_accuracy_interpolated:.3f} "
                f"| {row.difference:+.3f} ({row.ci_low:+.3f} to {row.ci_high:+.3f}) |"
            )
        lines.append("")
    lines += ["## All points (mean +- standard deviation over seeds)", "",
              "| mechanism | epsilon | median N_w | accuracy | macro-F1 |", "|---|---|---|---|---|"]
    for row in summary.sort_values(["mechanism", "epsilon"]).itertuples():
        lines.append(
            f"| {row.mechanism} | {row.epsilon:g} | {row.median_nw:.3f} | {row.accuracy_mean:.3f} +- "
            f"{row.accuracy_std:.3f} | {row.macro_f1_mean:.3f} +- {row.macro_f1_std:.3f} |"
        )
    lines += ["", "![utility against N_w](evaluation.png)", ""]
    return "\n".join(lines)
