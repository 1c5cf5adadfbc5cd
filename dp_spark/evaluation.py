"""Utility evaluation: the features the models see, how much of the text a
mechanism gives away, metrics, the comparisons at equal privacy, plot and
report (pure: numpy, pyarrow, pandas, matplotlib; no Spark).

Mechanisms are compared at equal privacy, never at equal epsilon, which buys
different noise in different mechanisms. Privacy is measured three ways, each
a property of the mechanism on the text's own words (not of one run):
- N_w over the text: the share of the text's tokens that come back unchanged;
- the reconstruction rate: the share of its tokens that an adversary who
  knows the mechanism and the text's word frequencies maps back to the
  original, guessing for each output the most probable original
  (Bayes-optimal);
- the booked guarantee: epsilon per unit of the guarantee's metric, where
  both mechanisms book one in the same metric.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from dp_spark.audit import audit_method, exact_log_laws, sampled_outputs
from dp_spark.classifier import BagOfWords, DenseRows, LogisticRegression
from dp_spark.index import default_cache_dir
from dp_spark.mechanisms import Mechanism
from dp_spark.mechanisms.tgumbel import TruncatedGumbel
from dp_spark.tokenize import Vocabulary, segment

log = logging.getLogger(__name__)

MODELS = {"bag_of_words": "bag of words", "embeddings": "averaged embeddings"}
METRICS = {"accuracy": "accuracy", "macro_f1": "macro-F1"}


@dataclass(frozen=True)
class Measure:
    """A privacy measure the comparison matches mechanisms on: the points
    table's ``column``, names for the report and the plot, and whether the
    baseline is interpolated on its logarithm."""

    column: str
    name: str
    axis_label: str
    logarithmic: bool = False


MEASURES = {
    "nw_text": Measure("nw_text_mean", "equal N_w over the text", "N_w over the text (share of its tokens kept)"),
    "reconstruction": Measure("reconstruction_rate", "equal reconstruction rate",
                              "reconstruction rate (share of tokens recovered)"),
    "guarantee": Measure("guarantee_epsilon", "equal booked guarantee", "booked epsilon", logarithmic=True),
}
PLOTTED_MEASURES = ("nw_text", "reconstruction")


# ---------------------------------------------------------------------------
# What the models see, and the text's word frequencies.

def words_by_row(strings: pa.Array, vocabulary: Vocabulary) -> tuple[np.ndarray, np.ndarray]:
    """(row, vocabulary id) of each in-vocabulary word of a string column,
    rows ascending, words cut as the perturber cuts them (entities such as
    numbers and urls are not words)."""
    segments = segment(strings, entities=True)
    positions = np.flatnonzero(segments.is_word)
    rows = np.repeat(np.arange(len(strings)), np.diff(segments.row_offsets))[positions]
    ids = vocabulary.ids(segments.values.take(pa.array(positions)))
    known = ids >= 0
    return rows[known], ids[known]


def mean_embeddings(strings: pa.Array, vocabulary: Vocabulary, vectors: np.ndarray) -> np.ndarray:
    """Per row, the mean of the embedding vectors of its in-vocabulary words
    (zeros for a row without any): rows x dimensions."""
    rows, ids = words_by_row(strings, vocabulary)
    counts = np.bincount(rows, minlength=len(strings))
    sums = np.zeros((len(strings), vectors.shape[1]))
    present = np.flatnonzero(counts)
    if len(present):
        # rows ascend, so each row's words are one run: one reduceat, no per-row loop
        starts = np.concatenate([[0], np.cumsum(counts)])[present]
        sums[present] = np.add.reduceat(np.asarray(vectors[ids], dtype=np.float64), starts, axis=0)
    return sums / np.maximum(counts, 1)[:, None]


def model_scores(train: tuple[pa.Array, np.ndarray], test: tuple[pa.Array, np.ndarray], classes: int,
                 vocabulary: Vocabulary, vectors: np.ndarray, max_words: int) -> dict[str, tuple[float, float]]:
    """Per model of ``MODELS``: (accuracy, macro-F1) on ``test`` of the model
    trained on ``train``, each a (texts, labels 0 .. classes - 1) pair."""
    (train_texts, train_labels), (test_texts, test_labels) = train, test
    words = BagOfWords.fit(train_texts, max_words)
    inputs = {
        "bag_of_words": (words.features(train_texts), words.features(test_texts)),
        "embeddings": (DenseRows(mean_embeddings(train_texts, vocabulary, vectors)),
                       DenseRows(mean_embeddings(test_texts, vocabulary, vectors))),
    }
    scores = {}
    for model, (train_features, test_features) in inputs.items():
        predictions = LogisticRegression.fit(train_features, train_labels, classes).predict(test_features)
        scores[model] = (accuracy(test_labels, predictions), macro_f1(test_labels, predictions))
    return scores


def word_counts(strings: pa.Array, vocabulary: Vocabulary) -> tuple[np.ndarray, np.ndarray]:
    """(word ids, counts) of the in-vocabulary words of a string column."""
    _, ids = words_by_row(strings, vocabulary)
    counts = np.bincount(ids)
    words = np.flatnonzero(counts)
    return words, counts[words]


# ---------------------------------------------------------------------------
# Privacy on the text's words: N_w and the Bayes-optimal adversary.

# Laws held at once (each a float64 row of |V|).
LAWS_PER_CHUNK = 64


def privacy_method(mechanism: Mechanism) -> str:
    """"exact" where the output law costs one vocabulary row per word, else
    "sampled". tgumbel's exact law needs a quadrature (about 0.25 s a word,
    minutes for the text's frequent words at every epsilon), so it is
    sampled like the mechanisms without a closed form."""
    if audit_method(mechanism) == "exact" and not isinstance(mechanism, TruncatedGumbel):
        return "exact"
    return "sampled"


@dataclass(frozen=True)
class TextPrivacy:
    """How much of a text's tokens a mechanism gives away: ``n_w``, the
    share that come back unchanged (N_w weighted by the words' counts), and
    ``reconstruction``, the share a Bayes-optimal adversary recovers;
    ``method`` says how they were found, and a sampled reconstruction also
    has its estimate from half the draws (how far it rose with the second
    half shows how far below the Bayes-optimal rate it may still be)."""

    n_w: float
    reconstruction: float
    method: str
    half_draws_reconstruction: float | None = None


def text_privacy(mechanism: Mechanism, words: np.ndarray, counts: np.ndarray, draws: int, seed: int = 0,
                 method: str | None = None, cache_dir: str | Path | None = None) -> TextPrivacy:
    """N_w and the reconstruction rate over the tokens of ``words``
    (occurring ``counts`` times). The adversary sees one output y, knows the
    mechanism's law P[y | x] and takes the words' frequencies as the prior
    pi: it guesses argmax_x pi(x) P[y | x] among ``words``, and succeeds with
    probability sum_y max_x pi(x) P[y | x].

    Exact where ``method`` (default: ``privacy_method``) says so. Otherwise
    from ``draws`` keyed draws per word (public ``seed``; kept in a
    ``DrawCache`` under ``cache_dir``), the reconstruction leave-one-out:
    each draw is judged by the rule learnt from all the other draws, so the
    estimate is that of a real adversary with draws - 1 samples per word,
    below the Bayes-optimal rate in expectation (the more so the broader the
    law)."""
    words = np.asarray(words, dtype=np.int64)
    prior = np.asarray(counts, dtype=np.float64) / np.sum(counts)
    method = method or privacy_method(mechanism)
    if method == "exact":
        n_w, reconstruction = _exact_privacy(mechanism, words, prior)
        return TextPrivacy(n_w, reconstruction, method)
    outputs = DrawCache(mechanism, draws, seed, cache_dir).outputs(words)
    n_w = float((prior * (outputs == words[:, None]).mean(axis=1)).sum())
    return TextPrivacy(n_w, _held_out_bayes_rate(outputs, words, prior), method,
                       _held_out_bayes_rate(outputs[:, : draws // 2], words, prior))


def _exact_privacy(mechanism: Mechanism, words: np.ndarray, prior: np.ndarray) -> tuple[float, float]:
    best = np.full(mechanism.embeddings.size, -np.inf)
    kept = np.empty(len(words))
    log_prior = np.log(prior)
    for start in range(0, len(words), LAWS_PER_CHUNK):
        chunk = slice(start, start + LAWS_PER_CHUNK)
        laws = exact_log_laws(mechanism, words[chunk])
        kept[chunk] = np.exp(laws[np.arange(len(laws)), words[chunk]])
        np.maximum(best, (laws + log_prior[chunk, None]).max(axis=0), out=best)
    return float((prior * kept).sum()), float(np.exp(best).sum())


class DrawCache:
    """Keyed draws of one mechanism configuration, per word, on disk: they
    depend only on public things (the embeddings, the mechanism and its
    parameters, the number of draws, the public seed), so a rerun samples
    nothing, and since draw j of word w is keyed by (seed, w, j), words
    sampled in different runs give the same draws."""

    def __init__(self, mechanism: Mechanism, draws: int, seed: int = 0,
                 cache_dir: str | Path | None = None) -> None:
        description = json.dumps({"embeddings": mechanism.embeddings.fingerprint, **mechanism.describe(),
                                  "draws": draws, "seed": seed}, sort_keys=True, default=str)
        key = hashlib.sha256(description.encode()).hexdigest()[:24]
        self.path = Path(cache_dir or default_cache_dir()) / "draws" / f"{mechanism.name}-{key}.npz"
        self.mechanism, self.draws, self.seed = mechanism, draws, seed
        self.known: dict[int, np.ndarray] = {}
        if self.path.is_file():
            try:
                with np.load(self.path) as data:
                    self.known = dict(zip(data["words"].tolist(), data["outputs"]))
            except (OSError, KeyError, ValueError) as error:
                log.warning("ignoring unreadable draw cache %s: %s", self.path, error)

    def outputs(self, words: np.ndarray) -> np.ndarray:
        """(len(words), draws) outputs, drawing only for words not cached yet."""
        missing = np.array(sorted({int(w) for w in words} - set(self.known)), dtype=np.int64)
        if len(missing):
            drawn = sampled_outputs(self.mechanism, missing, self.draws, self.seed).astype(np.int32)
            self.known.update(zip(missing.tolist(), drawn))
            self._save()
        return np.stack([self.known[int(w)] for w in words]).astype(np.int64)

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.path.parent, suffix=".npz", delete=False) as handle:
            np.savez(handle, words=np.array(list(self.known), dtype=np.int64),
                     outputs=np.stack(list(self.known.values())))
        os.replace(handle.name, self.path)


def _held_out_bayes_rate(outputs: np.ndarray, words: np.ndarray, prior: np.ndarray) -> float:
    """``outputs[i, j]``: draw j of word i. The rule scores candidate x for
    output y by pi(x) c(x, y), c the count of draws of x giving y; a draw of
    x giving y is judged with its own draw left out, pi(x) (c(x, y) - 1),
    against the best other candidate. Equal positive scores split the guess
    evenly; an output no other draw explains is guessed to be itself."""
    candidates, draws = outputs.shape
    codes, counts = np.unique(outputs.ravel() * candidates + np.repeat(np.arange(candidates), draws),
                              return_counts=True)
    output, source = codes // candidates, codes % candidates
    score = prior[source] * counts
    held_out = prior[source] * (counts - 1)
    # Per output, the best and second-best candidate's score.
    order = np.lexsort((-score, output))
    first = np.ones(len(order), dtype=bool)
    first[1:] = output[order][1:] != output[order][:-1]
    group = np.cumsum(first) - 1
    best = score[order][first]
    second = np.zeros(len(best))
    runner_up = np.flatnonzero(~first & np.r_[False, first[:-1]])
    second[group[runner_up]] = score[order][runner_up]
    is_best = np.zeros(len(order), dtype=bool)
    is_best[order[first]] = True
    group_of = np.empty(len(order), dtype=np.int64)
    group_of[order] = group
    rival = np.where(is_best, second[group_of], best[group_of])
    success = np.where(held_out > rival, 1.0, np.where(held_out == rival, 0.5, 0.0))
    unexplained = (held_out == 0) & (rival == 0)
    success[unexplained] = words[source[unexplained]] == output[unexplained]
    return float((prior[source] * counts / draws * success).sum())


# ---------------------------------------------------------------------------
# Metrics and summaries.

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


def labels_imbalanced(class_counts: dict[str, int]) -> bool:
    """Whether the largest class has over 1.5 times the rows of the smallest:
    then accuracy mostly rewards the majority class, and macro-F1 is the
    metric to compare on."""
    counts = list(class_counts.values())
    return len(counts) > 1 and max(counts) > 1.5 * min(counts)


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds of each (model, mechanism,
    epsilon) point, with its privacy measures."""
    grouped = results.groupby(["dataset", "model", "mechanism", "epsilon"], sort=True)
    summary = grouped.agg(
        seeds=("seed", "nunique"),
        accuracy_mean=("accuracy", "mean"), accuracy_std=("accuracy", "std"),
        macro_f1_mean=("macro_f1", "mean"), macro_f1_std=("macro_f1", "std"),
        nw_vocabulary_median=("nw_vocabulary_median", "first"), nw_text_mean=("nw_text_mean", "first"),
        reconstruction_rate=("reconstruction_rate", "first"), guarantee=("guarantee", "first"),
        guarantee_epsilon=("guarantee_epsilon", "first"), guarantee_metric=("guarantee_metric", "first"),
    ).reset_index()
    return summary.fillna({"accuracy_std": 0.0, "macro_f1_std": 0.0})


# ---------------------------------------------------------------------------
# Comparisons at equal privacy.

# Two-sided 95% quantiles of Student's t by degrees of freedom (1-10), for
# the paired comparison over a handful of seeds.
T_975 = (12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23)


OUTCOMES = (("wins", "wins"), ("loses", "loses"), ("interval includes zero", "the 95% interval includes zero"),
            ("one seed", "one seed gives no interval"))


@dataclass(frozen=True)
class Comparison:
    """``challenger`` against ``baseline`` at equal ``measure`` on ``model``'s
    ``metric``: ``table`` holds one row per compared challenger point,
    ``outside`` the challenger's epsilons beyond the baseline's range, or
    ``reason`` says why nothing was compared."""

    challenger: str
    baseline: str
    measure: str
    model: str
    metric: str
    table: pd.DataFrame
    outside: tuple[float, ...] = ()
    reason: str | None = None

    def sentence(self) -> str:
        """Where the challenger wins, loses, and where the interval includes zero."""
        if self.reason:
            return f"not compared: {self.reason}."
        parts = []
        for outcome, phrase in OUTCOMES:
            epsilons = self.table.loc[self.table["outcome"] == outcome, "epsilon"]
            if len(epsilons) == len(self.table):
                parts.append(f"{phrase} at every compared epsilon ({_epsilons(epsilons)})")
            elif len(epsilons):
                parts.append(f"{phrase} at epsilon {_epsilons(epsilons)}")
        if self.outside:
            parts.append(f"not compared at epsilon {_epsilons(self.outside)} (outside {self.baseline}'s range)")
        differences = self.table["difference"]
        return (f"{'; '.join(parts)} (difference in {METRICS[self.metric]} {_signed(differences.min())} to "
                f"{_signed(differences.max())}).")


def _signed(value: float) -> str:
    """``value`` with its sign to three decimals, more where it would round
    to zero (-0.0002, not -0.000: the sign is what a verdict turns on)."""
    digits = 3
    while 0 < abs(value) < 0.5 * 10.0 ** -digits and digits < 6:
        digits += 1
    return f"{value + 0.0:+.{digits}f}"


def _epsilons(values: Any) -> str:
    return ", ".join(f"{v:g}" for v in sorted(values))


def compare_at_equal(points: pd.DataFrame, challenger: str, baseline: str, measure: str, model: str,
                     metric: str) -> Comparison:
    """For each epsilon of ``challenger``: per seed, the difference between its
    ``metric`` and the ``baseline``'s at the same level of ``measure`` (linear
    interpolation between the baseline's grid points of that seed, on log
    epsilon for the booked guarantee: same split, so the comparison is
    paired); the mean difference, its standard error, a 95% interval
    (Student's t) and the outcome: ``wins`` or ``loses`` when the interval
    excludes zero. Points outside the baseline's range are left out."""
    spec = MEASURES[measure]
    points = points[points["model"] == model]
    reason = guarantee_mismatch(points, challenger, baseline) if measure == "guarantee" else None
    if reason:
        return Comparison(challenger, baseline, measure, model, metric, pd.DataFrame(), reason=reason)
    transform = np.log if spec.logarithmic else np.asarray
    base_all = points[points["mechanism"] == baseline]
    rows = []
    for epsilon, group in points[points["mechanism"] == challenger].groupby("epsilon", sort=True):
        level = float(group[spec.column].iloc[0])
        differences, values, interpolated = [], [], []
        for row in group.itertuples():
            grid = base_all[base_all["seed"] == row.seed].groupby(spec.column)[metric].mean().sort_index()
            if len(grid) < 2 or not grid.index.min() <= level <= grid.index.max():
                continue
            value = float(np.interp(transform(level), transform(grid.index.to_numpy(float)), grid.to_numpy()))
            values.append(getattr(row, metric))
            interpolated.append(value)
            differences.append(getattr(row, metric) - value)
        if not differences:
            continue
        n = len(differences)
        mean = float(np.mean(differences))
        error = float(np.std(differences, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
        half_width = T_975[min(n - 1, len(T_975)) - 1] * error if n > 1 else float("nan")
        low, high = mean - half_width, mean + half_width
        outcome = ("one seed" if n == 1 else "wins" if low > 0 else "loses" if high < 0
                   else "interval includes zero")
        rows.append({
            "model": model, "challenger": challenger, "baseline": baseline, "measure": measure,
            "epsilon": epsilon, "level": level, "seeds": n, "challenger_value": float(np.mean(values)),
            "baseline_value": float(np.mean(interpolated)), "difference": mean, "standard_error": error,
            "ci_low": low, "ci_high": high, "outcome": outcome,
        })
    table = pd.DataFrame(rows)
    if table.empty:
        return Comparison(challenger, baseline, measure, model, metric, table,
                          reason=_outside(points, challenger, baseline, spec))
    outside = set(points.loc[points["mechanism"] == challenger, "epsilon"]) - set(table["epsilon"])
    return Comparison(challenger, baseline, measure, model, metric, table, tuple(sorted(outside)))


def guarantee_mismatch(points: pd.DataFrame, challenger: str, baseline: str) -> str | None:
    """Why the two mechanisms' booked guarantees cannot be matched by epsilon,
    or None: both must be pure (or both within sets) in the same metric."""
    booked = {}
    for mechanism in (challenger, baseline):
        rows = points[points["mechanism"] == mechanism]
        kind, metric = rows["guarantee"].iloc[0], rows["guarantee_metric"].iloc[0]
        if kind == "none":
            return f"{mechanism} books no guarantee"
        if kind == "approximate":
            return f"{mechanism} books an approximate guarantee, whose delta epsilon alone does not match"
        booked[mechanism] = (kind, metric)
    (kind, metric), (base_kind, base_metric) = booked[challenger], booked[baseline]
    if kind != base_kind:
        return f"{challenger} books a {kind} guarantee, {baseline} a {base_kind} one"
    if metric != base_metric:
        return f"{challenger}'s epsilon is per unit of {metric}, {baseline}'s per unit of {base_metric}"
    return None


def _outside(points: pd.DataFrame, challenger: str, baseline: str, spec: Measure) -> str:
    def span(mechanism: str) -> str:
        levels = points.loc[points["mechanism"] == mechanism, spec.column]
        return f"{levels.min():.3g}-{levels.max():.3g}"

    return (f"{challenger}'s {spec.axis_label.split(' (')[0]} ({span(challenger)}) lies outside the range "
            f"{baseline}'s grid covers ({span(baseline)})")


def comparisons(points: pd.DataFrame, baseline: str | None, metric: str) -> list[Comparison]:
    """Every evaluated mechanism against the baseline, on every measure and model."""
    mechanisms = sorted(set(points["mechanism"]) - {"original", baseline})
    if baseline is None or baseline not in set(points["mechanism"]):
        return []
    return [compare_at_equal(points, challenger, baseline, measure, model, metric)
            for measure in MEASURES for challenger in mechanisms for model in MODELS]


# ---------------------------------------------------------------------------
# Plot.

LABEL_OFFSETS = ((6, -11, "left"), (6, 4, "left"), (-6, 4, "right"), (-6, -11, "right"),
                 (6, -20, "left"), (6, 13, "left"), (-6, 13, "right"), (-6, -20, "right"),
                 (10, -3, "left"), (-10, -3, "right"), (6, -30, "left"), (6, 23, "left"),
                 (-6, -30, "right"), (-6, 23, "right"), (16, -3, "left"), (-16, -3, "right"),
                 (6, -40, "left"), (6, 33, "left"), (-6, -40, "right"), (-6, 33, "right"))
# Points of one mechanism closer than this (pixels) share one epsilon label.
MERGE_PIXELS = 14.0


def plot(summary: pd.DataFrame, title: str, metrics: tuple[str, ...]) -> bytes:
    """PNG: each metric against N_w over the text and against the
    reconstruction rate (rows), one column per model; a curve per mechanism
    with its epsilons as labels (error bars: standard deviation over seeds),
    the original text as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(metric, measure) for metric in metrics for measure in PLOTTED_MEASURES]
    figure, axes = plt.subplots(len(panels), len(MODELS), figsize=(12, 4.2 * len(panels)), dpi=110,
                                squeeze=False, layout="constrained")
    colours = dict(zip(sorted(set(summary["mechanism"]) - {"original"}),
                       plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    labels: list[tuple[Any, list[tuple[float, float, float, float, str]]]] = []
    for (metric, measure), row_axes in zip(panels, axes):
        spec = MEASURES[measure]
        for axis, model in zip(row_axes, MODELS):
            rows = summary[summary["model"] == model]
            marks = []
            for mechanism, curve in rows[rows["mechanism"] != "original"].groupby("mechanism", sort=True):
                curve = curve.sort_values(spec.column)
                axis.errorbar(curve[spec.column], curve[f"{metric}_mean"], yerr=curve[f"{metric}_std"], marker="o",
                              markersize=4, capsize=3, color=colours[mechanism], label=mechanism)
                marks += [(row[spec.column], row[f"{metric}_mean"], row[f"{metric}_std"], row["epsilon"], mechanism)
                          for _, row in curve.iterrows()]
            original = rows[rows["mechanism"] == "original"]
            if not original.empty:
                mean, std = original[f"{metric}_mean"].iloc[0], original[f"{metric}_std"].iloc[0]
                axis.axhline(mean, color="black", linestyle="--", linewidth=1, label="original text")
                axis.axhspan(mean - std, mean + std, color="black", alpha=0.08)
            axis.set_xlim(-0.03, 1.03)
            axis.set_xlabel(spec.axis_label)
            axis.set_ylabel(f"test {METRICS[metric]}")
            axis.set_title(MODELS[model], fontsize=10)
            axis.grid(True, alpha=0.3)
            labels.append((axis, marks))
    axes[0][0].legend(loc="lower right", fontsize=8)
    figure.suptitle(title, fontsize=11)
    # Freeze the layout, then place the epsilon labels where they overlap nothing.
    figure.canvas.draw()
    figure.set_layout_engine("none")
    renderer = figure.canvas.get_renderer()
    for axis, marks in labels:
        label_epsilons(axis, marks, colours, renderer)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def label_epsilons(axis: Any, marks: list[tuple[float, float, float, float, str]], colours: dict[str, str],
                   renderer: Any) -> None:
    """Label each point (x, y, error, epsilon, mechanism) with its epsilon:
    a mechanism's points that lie on top of each other share one label
    ("100, 200, 400"), and each label takes the first offset around its
    point that overlaps no other label, marker or error bar, or where none
    is clear, the one that overlaps them least."""
    from matplotlib.transforms import Bbox

    pixels = [axis.transData.transform((x, y)) for x, y, _, _, _ in marks]
    obstacles = []
    for (x, y, error, _, _), (px, py) in zip(marks, pixels):
        low, high = (axis.transData.transform((x, value))[1] for value in (y - error, y + error))
        obstacles += [Bbox.from_extents(px - 5, py - 5, px + 5, py + 5), Bbox.from_extents(px - 4, low, px + 4, high)]
    inside = axis.get_window_extent(renderer)
    groups: list[list[int]] = []
    for i, mark in enumerate(marks):
        near = [g for g in groups if marks[g[0]][4] == mark[4] and np.hypot(*(pixels[g[0]] - pixels[i])) < MERGE_PIXELS]
        if near:
            near[0].append(i)
        else:
            groups.append([i])
    placed: list[Any] = []
    for group in groups:
        x, y, _, _, mechanism = marks[group[0]]
        text = ", ".join(f"{marks[i][3]:g}" for i in sorted(group, key=lambda i: marks[i][3]))
        best = None
        for dx, dy, align in LABEL_OFFSETS:
            label = axis.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=7,
                                  ha=align, color=colours[mechanism])
            box = label.get_window_extent(renderer)
            # Labels over labels are the worst: they become unreadable; a label over a bar stays legible.
            overlap = (10 * sum(_area(box, other) for other in placed) + sum(_area(box, o) for o in obstacles)
                       + 100 * (box.width * box.height - _area(box, inside)))
            label.remove()
            if best is None or overlap < best[0]:
                best = (overlap, dx, dy, align)
            if overlap == 0:
                break
        _, dx, dy, align = best
        label = axis.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=7, ha=align,
                              color=colours[mechanism])
        placed.append(label.get_window_extent(renderer))


def _area(box: Any, other: Any) -> float:
    """The area two boxes share (0 when they do not overlap)."""
    width = min(box.x1, other.x1) - max(box.x0, other.x0)
    height = min(box.y1, other.y1) - max(box.y0, other.y0)
    return max(width, 0.0) * max(height, 0.0)


# ---------------------------------------------------------------------------
# Report.

def report(dataset: str, summary: pd.DataFrame, found: list[Comparison], settings: dict[str, Any]) -> str:
    """Markdown: the set-up, the verdicts, a table per measure and all points."""
    metric = settings["metric"]
    lines = [f"# Utility evaluation: {dataset}", "", f"Command: `{settings['command']}`", "",
             *_setup(settings), ""]
    baseline = settings["baseline"]
    mechanisms = sorted(set(summary["mechanism"]) - {"original"})
    lines += ["## Verdict", ""]
    if not found:
        lines += [f"Only {', '.join(mechanisms)} evaluated: there is no other mechanism to compare with."
                  if len(mechanisms) < 2 else "No baseline mechanism was evaluated: nothing compared.", ""]
    else:
        lines += [f"Each mechanism against {baseline}, on test {METRICS[metric]}, paired by seed; a point counts "
                  "as a win or a loss only when its 95% interval (Student's t over the seeds) excludes zero.", ""]
        for comparison in found:
            lines.append(f"- **{comparison.challenger} vs {baseline}, {MEASURES[comparison.measure].name}, "
                         f"{MODELS[comparison.model]}**: {comparison.sentence()}")
        lines.append("")
        for measure, spec in MEASURES.items():
            tables = [c.table for c in found if c.measure == measure and not c.table.empty]
            lines += [f"## At {spec.name}", ""]
            if not tables:
                lines += ["Nothing compared (see the verdict).", ""]
                continue
            lines += [f"| model | mechanism | epsilon | {spec.axis_label} | its {METRICS[metric]} | {baseline} at that "
                      f"level | difference (95% interval) | outcome |", "|---|---|---|---|---|---|---|---|"]
            for row in pd.concat(tables).itertuples():
                level = f"{row.level:g}" if spec.logarithmic else f"{row.level:.3f}"
                lines.append(
                    f"| {MODELS[row.model]} | {row.challenger} | {row.epsilon:g} | {level} | "
                    f"{row.challenger_value:.3f} | {row.baseline_value:.3f} | {_signed(row.difference)} "
                    f"({_signed(row.ci_low)} to {_signed(row.ci_high)}) | {row.outcome} |")
            lines.append("")
    lines += _all_points(summary, settings["metrics"])
    lines += ["", "![utility against privacy](evaluation.png)", ""]
    return "\n".join(lines)


def _setup(settings: dict[str, Any]) -> list[str]:
    split = (f"fixed: the rows whose {settings['split_column']} is \"test\" ({settings['test_rows']} rows) are "
             "the test set, the others the training set; the seeds vary only the noise"
             if settings["split_column"] else
             f"{settings['test_fraction']:.0%} of each label held out, drawn anew for each seed")
    classes = ", ".join(f"{label} {share:.0%}" for label, share in settings["class_shares"].items())
    metric = ("macro-F1: the labels are imbalanced, and accuracy mostly rewards the majority class"
              if settings["metric"] == "macro_f1" else "accuracy (the labels are balanced)")
    embeddings = settings["embeddings"]
    return [
        f"Data: {settings['rows']} labeled rows"
        + (f" ({settings['dropped']} without a label or any text left out)" if settings["dropped"] else "")
        + f"; text column{'s' if len(settings['text_columns']) > 1 else ''} "
        + " + ".join(settings["text_columns"])
        + (" (joined with a space; every token is perturbed alike, so joining first does not change the law)"
           if len(settings["text_columns"]) > 1 else "")
        + f"; labels: {classes}. Split: {split}; seeds {settings['seeds']}. Training text perturbed, test text "
        + ("perturbed too." if settings["perturb_test"] else "original."),
        "",
        "Models, trained on the same rows (on the driver: dp_spark.classifier):",
        f"- bag of words: {settings['bag_of_words']}; it sees exact words only, so a substitute counts as a "
        "different word however close its meaning;",
        f"- averaged embeddings: the mean of the row's word vectors in {embeddings}, then {settings['logistic']}; "
        "a substitute near the original keeps most of the feature. These are the embeddings the mechanisms "
        "perturb in, which favours substitutes that are near in that space: it shows what meaning survives, "
        "not what a model in another space would see.",
        "",
        "Privacy, per mechanism and epsilon (properties of the mechanism on the text's words, not of one run), "
        f"over the {settings['text_words']} most frequent words of the training text ({settings['coverage']:.0%} "
        "of its in-vocabulary tokens), weighted by their counts:",
        "- N_w over the text: the share of those tokens that come back unchanged;",
        "- reconstruction rate: the share of those tokens that an adversary who knows the mechanism and the word "
        "frequencies maps back to the original (for each output, the most probable original among those words); "
        "it is at least N_w, since guessing the output itself is one of the adversary's rules;",
        f"- both {_privacy_methods(settings)};",
        "- booked guarantee: the epsilon a mechanism books per unit of its metric; only mechanisms booking "
        "guarantees in the same metric are compared at equal booked epsilon.",
        "",
        f"N_w over the vocabulary (the median over {settings['nw_sample']} vocabulary words, "
        f"{settings['nw_draws']} draws each, as calibration reports it) is listed for reference.",
        "",
        f"Compared on test {metric}.",
    ]


def _privacy_methods(settings: dict[str, Any]) -> str:
    exact, rises, draws = settings["exact"], settings["sampled_rises"], settings["draws"]
    parts = [f"exact for {', '.join(exact)} (from the closed-form law)"] if exact else []
    if rises:
        parts.append(
            f"estimated for {', '.join(rises)} from {draws} keyed draws per word, each draw judged by the "
            "reconstruction rule learnt from the others: a real adversary's rate, below the Bayes-optimal one "
            f"(from {draws // 2} to {draws} draws it rose by at most "
            + ", ".join(f"{rise:.3f} for {name}" for name, rise in rises.items())
            + ", and may be low by about as much again)")
    return "; ".join(parts)


def _all_points(summary: pd.DataFrame, metrics: tuple[str, ...]) -> list[str]:
    columns = [(model, metric) for model in MODELS for metric in metrics]
    header = " | ".join(f"{MODELS[model]} {METRICS[metric]}" for model, metric in columns)
    lines = ["## All points (mean +- standard deviation over seeds)", "",
             f"| mechanism | epsilon | guarantee | N_w vocabulary (median) | N_w over the text | reconstruction "
             f"rate | {header} |", "|---|---|---|---|---|---|" + "---|" * len(columns)]
    wide = summary.set_index(["mechanism", "epsilon", "model"])
    for (mechanism, epsilon), rows in summary.groupby(["mechanism", "epsilon"], sort=True):
        first = rows.iloc[0]
        booked = (f"{first['guarantee']} {first['guarantee_epsilon']:g} ({first['guarantee_metric']})"
                  if first["guarantee"] not in ("none", "-") else first["guarantee"])
        cells = []
        for model, metric in columns:
            point = wide.loc[(mechanism, epsilon, model)]
            cells.append(f"{point[f'{metric}_mean']:.3f} +- {point[f'{metric}_std']:.3f}")
        lines.append(f"| {mechanism} | {epsilon:g} | {booked} | {first['nw_vocabulary_median']:.3f} | "
                     f"{first['nw_text_mean']:.3f} | {first['reconstruction_rate']:.3f} | {' | '.join(cells)} |")
    return lines
