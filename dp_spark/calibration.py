"""Calibration tables, plot and report from N_w / S_w measurements (pure:
pandas and, for the plot, matplotlib).

Users choose epsilon by how often words survive (N_w) and how many distinct
substitutes they get (S_w), compared across mechanisms at equal N_w, not by
trusting the number epsilon, which means different things per mechanism.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dp_spark.stats import FREQUENCY_BANDS, summarize


@dataclass(frozen=True)
class Refusal:
    mechanism: str
    epsilon: float
    reason: str


def summary_table(words: pd.DataFrame, refusals: list[Refusal], details: dict[tuple[str, float], dict]) -> pd.DataFrame:
    """One row per (mechanism, epsilon, band) with N_w and S_w summaries;
    ``band`` "all" covers every sampled word. Refused epsilons appear with
    their reason and no statistics."""
    rows: list[dict[str, Any]] = []
    for (mechanism, epsilon), group in words.groupby(["mechanism", "epsilon"], sort=True):
        for band in ("all", *(name for name, _, _ in FREQUENCY_BANDS)):
            part = group if band == "all" else group[group["band"] == band]
            if part.empty:
                continue
            row = {"mechanism": mechanism, "epsilon": float(epsilon), "band": band, "status": "ok",
                   "reason": None, "words": len(part)}
            row.update({f"nw_{k}": v for k, v in summarize(part["n_w"]).items()})
            row.update({f"sw_{k}": v for k, v in summarize(part["s_w"]).items()})
            row["details"] = _json(details.get((mechanism, float(epsilon)), {}))
            rows.append(row)
    for refusal in refusals:
        rows.append({"mechanism": refusal.mechanism, "epsilon": refusal.epsilon, "band": "all",
                     "status": "refused", "reason": refusal.reason, "words": 0, "details": "{}"})
    table = pd.DataFrame(rows)
    return table.sort_values(["mechanism", "epsilon", "band"], ignore_index=True)


def _json(value: dict) -> str:
    import json

    return json.dumps(value, sort_keys=True, default=float)


def plot(summary: pd.DataFrame, minimum_epsilons: dict[str, float]) -> bytes:
    """PNG: median N_w and S_w against epsilon (log scale), one colour per
    mechanism, with 25-75% and 5-95% bands over words; the epsilons a
    mechanism refuses are marked by a strip along the bottom, up to a dotted
    line (shading the whole height would cover the other mechanisms' curves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    overall = summary[summary["band"] == "all"]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (mechanism, rows) in enumerate(overall.groupby("mechanism", sort=True)):
        colour = colours[i % len(colours)]
        ok = rows[rows["status"] == "ok"].sort_values("epsilon")
        refused = rows[rows["status"] == "refused"]
        for axis, stat in zip(axes, ("nw", "sw")):
            if not ok.empty:
                axis.plot(ok["epsilon"], ok[f"{stat}_p50"], "o-", color=colour, label=f"{mechanism} (median)")
                axis.fill_between(ok["epsilon"], ok[f"{stat}_p25"], ok[f"{stat}_p75"], color=colour, alpha=0.25)
                axis.fill_between(ok["epsilon"], ok[f"{stat}_p5"], ok[f"{stat}_p95"], color=colour, alpha=0.1)
            if not refused.empty:
                axis.plot(refused["epsilon"], np.full(len(refused), axis.get_ylim()[0] if stat == "sw" else 0.0),
                          "x", color=colour, markersize=9)
            floor = minimum_epsilons.get(mechanism)
            if floor:
                axis.axvspan(min(overall["epsilon"].min(), floor) / 1.5, floor, ymax=0.025, color=colour,
                             alpha=0.5, label=f"{mechanism} refuses epsilon <= {floor:.3g}")
                axis.axvline(floor, color=colour, linestyle=":", linewidth=1)
    axes[0].set_ylabel("N_w: fraction of draws returning the word itself")
    axes[0].set_ylim(-0.03, 1.03)
    axes[1].set_ylabel("S_w: distinct outputs per word")
    axes[1].set_yscale("log")
    for axis, title in zip(axes, ("How often a word survives", "How many substitutes a word gets")):
        axis.set_xscale("log")
        axis.set_xlabel("epsilon per token (log scale)")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend(loc="best", fontsize=8)
    figure.suptitle("Plausible deniability over a vocabulary sample: median, 25-75% and 5-95% of words "
                    "(strip along the bottom, up to a dotted line: epsilons the mechanism refuses)", fontsize=9)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def report(
    summary: pd.DataFrame,
    crossings: dict[str, str],
    settings: dict[str, Any],
    target: float,
) -> str:
    """Markdown: per mechanism, N_w and S_w by epsilon, and the epsilon for the
    target median N_w."""
    lines = [
        "# Calibration: plausible deniability against epsilon",
        "",
        f"Sample: {settings['sample_size']} words stratified by frequency band, {settings['draws']} draws "
        f"per word, seed {settings['seed']}; embeddings: {settings['embeddings']}.",
        f"Command: `{settings['command']}`",
        "",
        f"## Epsilon for median N_w = {target:g}",
        "",
    ]
    for mechanism, text in sorted(crossings.items()):
        lines.append(f"- **{mechanism}**: {text}")
    lines += ["", "## By epsilon", ""]
    overall = summary[summary["band"] == "all"]
    for mechanism, rows in overall.groupby("mechanism", sort=True):
        lines += [f"### {mechanism}", "", "| epsilon | median N_w (25-75%) | mean N_w | median S_w (25-75%) | status |",
                  "|---|---|---|---|---|"]
        for row in rows.sort_values("epsilon").itertuples():
            if row.status == "ok":
                lines.append(
                    f"| {row.epsilon:g} | {row.nw_p50:.3f} ({row.nw_p25:.3f}-{row.nw_p75:.3f}) | {row.nw_mean:.3f} "
                    f"| {row.sw_p50:g} ({row.sw_p25:g}-{row.sw_p75:g}) | ok |"
                )
            else:
                lines.append(f"| {row.epsilon:g} | - | - | - | refused: {row.reason} |")
        lines.append("")
    lines += [
        "## Reading it",
        "",
        "N_w is how often a word comes back unchanged; S_w how many distinct words it becomes over the",
        "draws. Small N_w and large S_w mean more plausible deniability, and less of the text kept.",
        "Compare mechanisms at equal N_w, not at equal epsilon: the same epsilon buys very different",
        "noise in different mechanisms. For tgumbel, N_w barely moves with epsilon (its Gumbel scale",
        "falls only logarithmically with epsilon); its utility comes from the kNN truncation.",
        "",
    ]
    return "\n".join(lines)


def describe_crossing(mechanism: str, epsilon: float | None, grid: pd.DataFrame, target: float,
                      floor: float | None) -> str:
    """One line for the report: the epsilon found, or why there is none."""
    ok = grid[(grid["band"] == "all") & (grid["status"] == "ok")].sort_values("epsilon")
    if epsilon is not None:
        return f"epsilon = {epsilon:.3g} (bisection on log epsilon, relative tolerance 1%)"
    if ok.empty:
        where = f" (valid only above epsilon_min = {floor:.4g})" if floor else ""
        return f"no valid epsilon in the grid{where}"
    low, high = ok["nw_p50"].min(), ok["nw_p50"].max()
    return (
        f"not reached: median N_w spans {low:.3f}-{high:.3f} over the valid grid "
        f"(epsilon {ok['epsilon'].min():g}-{ok['epsilon'].max():g})"
        + ("; it barely moves with epsilon" if high - low < 0.1 else "")
    )


def bracket(grid: pd.DataFrame, target: float) -> tuple[float, float] | None:
    """Neighbouring grid epsilons whose median N_w straddle the target,
    widened by one grid step on each side (the bisection sample differs)."""
    ok = grid[(grid["band"] == "all") & (grid["status"] == "ok")].sort_values("epsilon")
    epsilons, medians = ok["epsilon"].to_numpy(), ok["nw_p50"].to_numpy()
    for i in range(len(epsilons) - 1):
        if medians[i] <= target <= medians[i + 1]:
            return float(epsilons[max(i - 1, 0)]), float(epsilons[min(i + 2, len(epsilons) - 1)])
    return None
