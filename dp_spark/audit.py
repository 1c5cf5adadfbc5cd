"""The privacy auditor: the loss a mechanism really has, against the
guarantee it books.

For inputs x, x' at distance d(x, x') (the guarantee's metric) the privacy
loss per unit distance is
    loss(x, x') = max over output sets S of |ln P[M(x) in S] - ln P[M(x') in S]| / d(x, x'),
and an epsilon-d guarantee promises loss <= epsilon for every pair. Two ways
to measure it:

- ``exact``: where the output law is known exactly (tem, santext and
  SanText+, kde with the exact sampler, custext, diffractor, tgumbel by
  quadrature), the worst case over outputs,
  max_y |ln P[y | x] - ln P[y | x']| / d (for a discrete output the worst
  set is a single output). Probabilities are kept as logarithms, so an
  output impossible from one side gives an infinite loss, never an
  underflow. For a ``within_sets`` guarantee (conservative CusText) only
  pairs with the same output set count, with d = 1; a mechanism whose
  guarantee is in a metric of its own (diffractor's list positions) gives
  that metric by ``metric_distances``, and its nearest words in it pair up.
- ``sampled``: otherwise (mlap, mahalanobis, vickrey, kde with
  Metropolis-Hastings), a statistical lower bound in the manner of StatDP
  (Ding et al., CCS 2018) and DP-Sniper (Bichsel et al., S&P 2021): per
  pair, draws of M(x) and M(x') with keyed randomness from a public audit
  seed; the first half of each chooses the output event S that separates the
  two best, the second half bounds P[M(x) in S] from below and
  P[M(x') in S] from above (Clopper-Pearson, each bound at level
  (1 - confidence) / (2 pairs), so that all the pairs' bounds hold together
  with the stated confidence), and the smallest epsilon consistent with them
  is reported: ln(p_low / q_high) / d for a pure guarantee, or with a delta,
  from p_low <= e^(eps d) q_high + (1 + e^(eps d)) delta.

Pairs: each word of a frequency-stratified sample with its nearest
neighbours (those bind: a pure mechanism's loss per unit distance is largest
for close pairs), from the mechanism's neighbour table or an exact FAISS
search. ``audit_pairs`` audits any given pairs, so that they can be spread
over tasks; ``summarize`` combines the per-pair tables into one verdict.

A claim is ``refuted`` when the exact loss exceeds the claimed epsilon by more
than rounding, or the lower bound exceeds it. A ``none`` guarantee claims
nothing, so nothing can refute it; its loss is reported all the same. The
exact method trusts that each sampler draws from its closed form, which the
distribution tests in tests/stats check.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from dp_spark.config import parse_value
from dp_spark.embeddings import Embeddings
from dp_spark.errors import ConfigError
from dp_spark.guarantees import EUCLIDEAN, WITHIN_SETS, Guarantee
from dp_spark.index import build_index, nearest_other_words
from dp_spark.mechanisms import Mechanism
from dp_spark.mechanisms.custext import CusText
from dp_spark.mechanisms.diffractor import Diffractor
from dp_spark.mechanisms.exponential import ExponentialMechanism
from dp_spark.mechanisms.kde import KernelDensity
from dp_spark.mechanisms.mahalanobis import mahalanobis_metric, regularized_covariance_root
from dp_spark.mechanisms.santext import SanText
from dp_spark.mechanisms.tgumbel import TruncatedGumbel, exact_log_distribution
from dp_spark.randomness import KeyedRandom, derive_key, mix64, token_keys
from dp_spark.stats import stratified_sample

# Exact losses are computed in float64 from float32 vectors: a relative
# excess this small is rounding, not a broken guarantee.
EXACT_TOLERANCE = 1e-6
# Exact laws cost one distance row each (tgumbel: ~0.25 s of quadrature on
# the default vocabulary); sampled pairs cost draws x search, so they get
# fewer words and neighbours. Both keep an audit to a few minutes on one core.
DEFAULT_WORDS = {"exact": 100, "sampled": 10}
DEFAULT_NEIGHBOURS = {"exact": 4, "sampled": 2}
# Laws held at once by the exact method (each is a float64 row of |V|).
LAWS_PER_CHUNK = 64
DRAW_BATCH_TOKENS = 100_000


@dataclass(frozen=True)
class AuditSettings:
    """How much to audit. ``words`` and ``neighbours_per_word`` default by
    method (``DEFAULT_WORDS``, ``DEFAULT_NEIGHBOURS``); ``draws`` per word for
    the sampled method, half to choose each pair's event and half to bound
    its probabilities; ``confidence`` that all the sampled lower bounds hold
    together; ``seed`` keys the word sample and the draws (public: an audit
    is reproducible by anyone); ``tv_words`` sampled words, frequent to
    rare, whose Metropolis-Hastings total variation is measured (kde mh)."""

    words: int | None = None
    neighbours_per_word: int | None = None
    draws: int = 20_000
    confidence: float = 0.95
    seed: int = 0
    tv_words: int = 3

    def __post_init__(self) -> None:
        for name in ("words", "neighbours_per_word"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.draws, bool) or not isinstance(self.draws, int) or self.draws < 2:
            raise ValueError(f"draws must be an integer >= 2, got {self.draws!r}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be between 0 and 1, got {self.confidence!r}")
        if isinstance(self.tv_words, bool) or not isinstance(self.tv_words, int) or self.tv_words < 0:
            raise ValueError(f"tv_words must be a non-negative integer, got {self.tv_words!r}")

    def word_count(self, method: str) -> int:
        return self.words or DEFAULT_WORDS[method]

    def neighbour_count(self, method: str) -> int:
        return self.neighbours_per_word or DEFAULT_NEIGHBOURS[method]


@dataclass(frozen=True)
class AuditResult:
    """One mechanism's audit. ``loss``: the largest measured loss per unit
    distance over the counted pairs (exact, or a lower bound at
    ``confidence``; NaN when no pair counted), reached by ``worst_pair`` at
    ``worst_distance``; ``infinite_pairs``: counted pairs where an output is
    possible from one word only; ``total_variations``: per audited word, the
    Metropolis-Hastings chain's distance to its exact law (kde mh only);
    ``table``: one row per pair (see ``audit_pairs``)."""

    mechanism: str
    epsilon: float
    params: dict[str, Any]
    guarantee: Guarantee
    method: str
    words: int
    pairs: int
    counted_pairs: int
    infinite_pairs: int
    draws: int | None
    confidence: float | None
    loss: float
    worst_pair: tuple[str, str] | None
    worst_distance: float | None
    total_variations: dict[str, float] | None
    seconds: float
    refuted: bool
    table: pd.DataFrame = field(repr=False, compare=False)

    @property
    def max_total_variation(self) -> float | None:
        return max(self.total_variations.values()) if self.total_variations else None

    def to_record(self) -> dict[str, Any]:
        """Flat fields for a summary table."""
        return {
            "mechanism": self.mechanism,
            "epsilon": self.epsilon,
            "params": json.dumps(self.params, sort_keys=True, default=str),
            **self.guarantee.to_record(),
            "method": self.method,
            "words": self.words,
            "pairs": self.pairs,
            "counted_pairs": self.counted_pairs,
            "infinite_pairs": self.infinite_pairs,
            "draws": self.draws,
            "confidence": self.confidence,
            "loss": self.loss,
            "worst_pair": " / ".join(self.worst_pair) if self.worst_pair else None,
            "worst_distance": self.worst_distance,
            "max_total_variation": self.max_total_variation,
            "seconds": self.seconds,
            "refuted": self.refuted,
        }


def audit(mechanism: Mechanism, settings: AuditSettings = AuditSettings()) -> AuditResult:
    """Audit ``mechanism`` on a frequency-stratified sample of its vocabulary,
    each sampled word paired with its nearest neighbours (see the module)."""
    started = time.perf_counter()
    words, pairs = audit_plan(mechanism, settings)
    table = audit_pairs(mechanism, pairs, settings)
    return summarize(mechanism, table, settings, seconds=time.perf_counter() - started,
                     total_variations=total_variations(mechanism, words, settings))


def audit_plan(mechanism: Mechanism, settings: AuditSettings) -> tuple[np.ndarray, np.ndarray]:
    """The sampled words (stratified by frequency) and the pairs to audit."""
    method = audit_method(mechanism)
    words = stratified_sample(mechanism.embeddings.size, settings.word_count(method), settings.seed)
    return words, nearest_pairs(mechanism, words, settings.neighbour_count(method))


def total_variations(mechanism: Mechanism, words: np.ndarray, settings: AuditSettings) -> dict[str, float] | None:
    """For kde mh, the chain's total variation to the exact law for
    ``tv_words`` of the sampled words (None for other mechanisms)."""
    if not (isinstance(mechanism, KernelDensity) and mechanism.sampler == "mh"):
        return None
    # Spread over the sample, which is sorted by frequency rank: frequent to rare words.
    measured = words[np.unique(np.linspace(0, len(words) - 1, settings.tv_words).round().astype(int))]
    return dict(zip(mechanism.embeddings.words_of(measured).tolist(),
                    (mechanism.mh_total_variation(int(w)) for w in measured)))


def audit_method(mechanism: Mechanism) -> str:
    """"exact" where the output law is known in closed form or by quadrature,
    else "sampled"."""
    if isinstance(mechanism, KernelDensity):
        return "exact" if mechanism.sampler == "exact" else "sampled"
    exact = (ExponentialMechanism, CusText, Diffractor, TruncatedGumbel)
    return "exact" if isinstance(mechanism, exact) else "sampled"


def nearest_pairs(mechanism: Mechanism, words: np.ndarray, per_word: int) -> np.ndarray:
    """(pairs, 2) ids: each word with its ``per_word`` nearest neighbours;
    for a ``within_sets`` guarantee, with the nearest members of its own
    output set instead (pairs across sets are not protected, so not audited)."""
    words = np.asarray(words, dtype=np.int64)
    per_word = min(per_word, mechanism.embeddings.size - 1)
    if mechanism.guarantee().kind == "within_sets":
        pairs = []
        for word, law in zip(words, exact_log_laws(mechanism, words)):
            members = np.flatnonzero(np.isfinite(law) & (np.arange(len(law)) != word))
            nearest = members[np.argsort(_distances_from(mechanism.embeddings, word, members), kind="stable")]
            pairs += [(word, partner) for partner in nearest[:per_word]]
        return np.array(pairs, dtype=np.int64).reshape(-1, 2)
    own_metric = getattr(mechanism, "metric_distances", None)
    if own_metric is not None:
        # Nearest in the metric the guarantee is stated in: those pairs bind.
        rows = (np.argsort(own_metric(int(word)), kind="stable") for word in words)
        neighbours = np.array([row[row != word][:per_word] for row, word in zip(rows, words)])
        return np.column_stack([np.repeat(words, per_word), neighbours.ravel()]).astype(np.int64)
    table = getattr(mechanism, "neighbours", None)
    if table is not None and table.k >= per_word:
        neighbours = table.ids[words, :per_word]
    else:
        vectors = mechanism.embeddings.vectors
        neighbours, _ = nearest_other_words(build_index(vectors, "flat"), vectors, words, per_word)
    return np.column_stack([np.repeat(words, per_word), neighbours.ravel()]).astype(np.int64)


def audit_pairs(
    mechanism: Mechanism,
    pairs: Sequence[tuple[int, int]] | np.ndarray,
    settings: AuditSettings = AuditSettings(),
    *,
    family_size: int | None = None,
) -> pd.DataFrame:
    """One row per pair (word, partner): ids, words, ``distance`` in the
    guarantee's metric, ``counted`` (False for pairs that the guarantee does
    not cover), ``loss`` per unit distance, and how it was found: the exact
    method's ``log_ratio`` at ``worst_output`` with both log probabilities
    there, or the sampled method's ``event_size`` (outputs in S),
    ``favours`` (the side S is likely under), ``p_low`` and ``q_high``.

    ``family_size``: how many pairs the whole audit covers (default: these),
    so that pairs audited in separate tasks share one Bonferroni correction."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if len(pairs) and (pairs.min() < 0 or pairs.max() >= mechanism.embeddings.size):
        raise ValueError(f"pair ids must be vocabulary ids in [0, {mechanism.embeddings.size})")
    guarantee = mechanism.guarantee()
    words = mechanism.embeddings.words_of
    table = pd.DataFrame({
        "word_id": pairs[:, 0], "partner_id": pairs[:, 1],
        "word": words(pairs[:, 0]), "partner": words(pairs[:, 1]),
        "distance": pair_distances(mechanism, guarantee, pairs),
    })
    if audit_method(mechanism) == "exact":
        if guarantee.kind == "approximate":
            raise ValueError("the exact audit bounds single outputs, which says nothing about a delta")
        measured = _exact_pairs(mechanism, guarantee, pairs, table["distance"].to_numpy())
    else:
        alpha = (1 - settings.confidence) / (2 * (family_size or max(len(pairs), 1)))
        measured = _sampled_pairs(mechanism, guarantee, pairs, table["distance"].to_numpy(), settings, alpha)
    return pd.concat([table, measured], axis=1)


def summarize(
    mechanism: Mechanism,
    table: pd.DataFrame,
    settings: AuditSettings,
    *,
    seconds: float,
    total_variations: dict[str, float] | None = None,
) -> AuditResult:
    """The verdict over per-pair tables (``audit_pairs``, concatenated)."""
    guarantee = mechanism.guarantee()
    method = audit_method(mechanism)
    counted = table[table["counted"]]
    loss, worst_pair, worst_distance = math.nan, None, None
    if len(counted):
        worst = worst_row(table)
        loss = float(worst["loss"])
        worst_pair, worst_distance = (str(worst["word"]), str(worst["partner"])), float(worst["distance"])
    refuted = False
    if guarantee.holds and not math.isnan(loss):
        allowed = guarantee.epsilon * (1 + EXACT_TOLERANCE) if method == "exact" else guarantee.epsilon
        refuted = loss > allowed
    described = mechanism.describe()
    params = {k: v for k, v in described.items()
              if k not in ("mechanism", "epsilon") and k not in guarantee.to_record()}
    return AuditResult(
        mechanism=mechanism.name,
        epsilon=mechanism.epsilon,
        params=params,
        guarantee=guarantee,
        method=method,
        words=int(table["word_id"].nunique()),
        pairs=len(table),
        counted_pairs=len(counted),
        infinite_pairs=int(np.isinf(counted["loss"]).sum()),
        draws=settings.draws if method == "sampled" else None,
        confidence=settings.confidence if method == "sampled" else None,
        loss=loss,
        worst_pair=worst_pair,
        worst_distance=worst_distance,
        total_variations=total_variations,
        seconds=seconds,
        refuted=refuted,
        table=table,
    )


def worst_row(table: pd.DataFrame) -> pd.Series:
    """The counted pair of largest loss (the first of equals), by position, so
    that tables concatenated with repeated index labels work too."""
    losses = table["loss"].where(table["counted"]).fillna(-np.inf).to_numpy()
    return table.iloc[int(np.argmax(losses))]


# ---------------------------------------------------------------------------
# Distances in the guarantee's metric.

def pair_distances(mechanism: Mechanism, guarantee: Guarantee, pairs: np.ndarray) -> np.ndarray:
    """d(x, x') for each pair in the metric the guarantee is stated in
    (Euclidean when it states none); 1 within an output set."""
    if guarantee.metric == WITHIN_SETS:
        return np.ones(len(pairs))
    own_metric = getattr(mechanism, "metric_distances", None)
    if own_metric is not None and guarantee.metric == getattr(mechanism, "metric", None):
        return np.array([own_metric(int(word))[partner] for word, partner in pairs], dtype=np.float64)
    vectors = mechanism.embeddings.vectors
    offsets = vectors[pairs[:, 0]].astype(np.float64) - vectors[pairs[:, 1]].astype(np.float64)
    if guarantee.metric in (None, EUCLIDEAN):
        return np.linalg.norm(offsets, axis=1)
    regularization = getattr(mechanism, "regularization", None)
    if regularization is not None and guarantee.metric == mahalanobis_metric(regularization):
        # d_RM = ||R^-1 (phi(x) - phi(x'))||, R the square root the noise is shaped by.
        root = regularized_covariance_root(vectors, regularization)
        return np.linalg.norm(np.linalg.solve(root, offsets.T), axis=0)
    raise ValueError(f"the auditor has no distance for the metric {guarantee.metric!r}")


def _distances_from(embeddings: Embeddings, word: int, others: np.ndarray) -> np.ndarray:
    vectors = embeddings.vectors
    return np.linalg.norm(vectors[others].astype(np.float64) - vectors[word].astype(np.float64), axis=1)


# ---------------------------------------------------------------------------
# Exact method.

def exact_log_laws(mechanism: Mechanism, words: np.ndarray) -> np.ndarray:
    """(len(words), |V|) ln P[M(w) = y] (-inf where y is impossible from w)."""
    words = np.asarray(words, dtype=np.int64)
    if isinstance(mechanism, TruncatedGumbel):
        return np.stack([exact_log_distribution(mechanism, int(w)) for w in words])
    if isinstance(mechanism, CusText):
        with np.errstate(divide="ignore"):
            return np.log(np.stack([mechanism.distribution(int(w)) for w in words]))
    if isinstance(mechanism, Diffractor):
        return np.stack([_diffractor_log_law(mechanism, int(w)) for w in words])
    if not isinstance(mechanism, ExponentialMechanism):
        raise ValueError(f"no exact law is known for mechanism {mechanism.name!r}")
    size = mechanism.embeddings.size
    vectors = mechanism.embeddings.vectors.astype(np.float64)
    squared_norms = (vectors**2).sum(axis=1)
    squared = squared_norms[words, None] + squared_norms[None, :] - 2 * vectors[words] @ vectors.T
    distances = np.sqrt(np.maximum(squared, 0))
    distances[np.arange(len(words)), words] = 0.0
    scores = mechanism.scores(np.arange(size)[None, :], distances)
    log_laws = scores - _log_sum_exp(scores)[:, None]
    if isinstance(mechanism, SanText) and mechanism.sensitive_fraction is not None:
        # SanText+: a word outside the sensitive range is sanitised with
        # probability p and kept otherwise.
        kept = np.flatnonzero(words < mechanism.first_sensitive)
        log_laws[kept] += math.log(mechanism.p) if mechanism.p else -np.inf
        keep = math.log(1 - mechanism.p) if mechanism.p < 1 else -np.inf
        log_laws[kept, words[kept]] = np.logaddexp(log_laws[kept, words[kept]], keep)
    return log_laws


def _diffractor_log_law(mechanism: Diffractor, word: int) -> np.ndarray:
    """ln of ``Diffractor.distribution(word)``, computed in log space: the
    geometric law's e^(-epsilon |j' - j|) underflows a few hundred positions
    out, where one side of a pair could round to 0 and the other not."""
    size = mechanism.embeddings.size
    epsilon = mechanism.epsilon
    lists = mechanism.word_lists
    per_list = np.empty((lists.count, size))
    for i, (order, positions) in enumerate(zip(lists.orders, lists.positions)):
        position = int(positions[word])
        offsets = np.abs(np.arange(size) - position)
        if mechanism.method == "tem":
            scores = -epsilon / 2 * np.minimum(offsets, mechanism.gamma)
            law = scores - _log_sum_exp(scores[None, :])[0]
        elif size == 1:
            law = np.zeros(1)
        else:  # the two-sided geometric law, its tails gathered at the ends
            log_norm = math.log1p(math.exp(-epsilon))
            law = math.log(-math.expm1(-epsilon)) - log_norm - epsilon * offsets
            law[0] = -epsilon * position - log_norm
            law[-1] = -epsilon * (size - 1 - position) - log_norm
        per_list[i, order] = law
    return _log_sum_exp(per_list.T) - math.log(lists.count)


def _exact_pairs(mechanism: Mechanism, guarantee: Guarantee, pairs: np.ndarray, distances: np.ndarray) -> pd.DataFrame:
    measured: list[tuple] = [()] * len(pairs)
    for chunk in _chunks_sharing_laws(pairs, LAWS_PER_CHUNK):
        ids = np.unique(pairs[chunk])
        laws = dict(zip(ids.tolist(), exact_log_laws(mechanism, ids)))
        for i in chunk:
            word, partner = int(pairs[i, 0]), int(pairs[i, 1])
            measured[i] = _exact_pair(laws[word], laws[partner], distances[i], guarantee)
    columns = ["counted", "loss", "log_ratio", "worst_output_id", "log_p_word", "log_p_partner"]
    frame = pd.DataFrame(measured, columns=columns)
    frame.insert(0, "method", "exact")
    known = frame["worst_output_id"] >= 0
    frame["worst_output"] = None
    frame.loc[known, "worst_output"] = mechanism.embeddings.words_of(frame.loc[known, "worst_output_id"].to_numpy())
    return frame


def _chunks_sharing_laws(pairs: np.ndarray, most: int) -> Iterator[list[int]]:
    """Indices of the pairs in chunks whose words have at most ``most``
    laws between them, each word's pairs together, so that a law is
    computed about once and only ``most`` are held at a time."""
    chunk: list[int] = []
    words: set[int] = set()
    for i in np.argsort(pairs[:, 0], kind="stable"):
        pair = {int(pairs[i, 0]), int(pairs[i, 1])}
        if chunk and len(words | pair) > most:
            yield chunk
            chunk, words = [], set()
        chunk.append(int(i))
        words |= pair
    if chunk:
        yield chunk


def _exact_pair(word_law: np.ndarray, partner_law: np.ndarray, distance: float, guarantee: Guarantee) -> tuple:
    """(counted, loss per unit distance, max |log ratio|, the output where it
    is reached, ln P there from each side)."""
    possible = np.isfinite(word_law) | np.isfinite(partner_law)
    if guarantee.kind == "within_sets" and not np.array_equal(np.isfinite(word_law), np.isfinite(partner_law)):
        return False, math.nan, math.nan, -1, math.nan, math.nan
    gaps = np.full(len(word_law), -np.inf)
    with np.errstate(invalid="ignore"):
        gaps[possible] = np.abs(word_law[possible] - partner_law[possible])
    worst = int(np.argmax(gaps))
    log_ratio = float(gaps[worst])
    return True, _per_unit(log_ratio, distance), log_ratio, worst, float(word_law[worst]), float(partner_law[worst])


def _per_unit(log_ratio: float, distance: float) -> float:
    """The loss per unit distance; words at distance 0 that the mechanism
    tells apart at all are not protected against each other."""
    if distance > 0:
        return log_ratio / distance
    return math.inf if log_ratio > 0 else 0.0


def _log_sum_exp(values: np.ndarray) -> np.ndarray:
    top = values.max(axis=1)
    with np.errstate(divide="ignore"):
        return top + np.log(np.exp(values - top[:, None]).sum(axis=1))


# ---------------------------------------------------------------------------
# Sampled method.

def sampled_outputs(mechanism: Mechanism, words: np.ndarray, draws: int, seed: int) -> np.ndarray:
    """(len(words), draws) outputs: draw j of word w uses the noise keyed by
    (seed, w, j), so a word's draws are the same in every pair and every
    task, and anyone with the public seed can replay the audit."""
    words = np.asarray(words, dtype=np.int64)
    audit_key = np.uint64(derive_key(str(seed).encode("utf-8"), "privacy audit draws"))
    out = np.empty((len(words), draws), dtype=np.int64)
    per_batch = max(1, DRAW_BATCH_TOKENS // draws)
    for start in range(0, len(words), per_batch):
        batch = words[start : start + per_batch]
        keys = token_keys(mix64(batch.astype(np.uint64) ^ audit_key), np.full(len(batch), draws))
        drawn = mechanism.perturb(np.repeat(batch, draws), KeyedRandom(keys))
        out[start : start + len(batch)] = drawn.reshape(len(batch), draws)
    return out


def _sampled_pairs(
    mechanism: Mechanism,
    guarantee: Guarantee,
    pairs: np.ndarray,
    distances: np.ndarray,
    settings: AuditSettings,
    alpha: float,
) -> pd.DataFrame:
    distinct, rows = np.unique(pairs, return_inverse=True)
    rows = rows.reshape(pairs.shape)
    outputs = sampled_outputs(mechanism, distinct, settings.draws, settings.seed)
    z = normal_upper_quantile(alpha)
    measured = [
        _sampled_pair(outputs[a], outputs[b], distance, guarantee.delta, alpha, z)
        for (a, b), distance in zip(rows, distances)
    ]
    frame = pd.DataFrame(measured, columns=["loss", "favours", "event_size", "p_low", "q_high"])
    frame.insert(0, "counted", True)
    frame.insert(0, "method", "sampled")
    frame["draws"] = settings.draws
    frame["bound_confidence"] = 1 - alpha
    return frame


def _sampled_pair(word_draws: np.ndarray, partner_draws: np.ndarray, distance: float, delta: float,
                  alpha: float, z: float) -> tuple[float, str, int, float, float]:
    """(loss lower bound per unit distance, the side S favours, |S|, p_low,
    q_high); ``z`` the normal quantile of ``alpha``, for choosing S."""
    half = len(word_draws) // 2
    outputs, codes = np.unique(np.concatenate([word_draws[:half], partner_draws[:half]]), return_inverse=True)
    word_counts = np.bincount(codes[:half], minlength=len(outputs))
    partner_counts = np.bincount(codes[half:], minlength=len(outputs))
    best = None
    for favours, likely, unlikely in (("word", word_counts, partner_counts), ("partner", partner_counts, word_counts)):
        # Neyman-Pearson: the best events are the outputs of highest likelihood
        # ratio; the prefix is chosen by what its bounds would show.
        order = np.argsort(-(likely + 0.5) / (unlikely + 0.5), kind="stable")
        scores = epsilon_from_bounds(
            _wilson(np.cumsum(likely[order]), half, -z), _wilson(np.cumsum(unlikely[order]), half, z), distance, delta
        )
        size = int(np.argmax(scores)) + 1
        if best is None or scores[size - 1] > best[0]:
            best = (scores[size - 1], favours, outputs[order[:size]])
    _, favours, event = best
    likely_draws, unlikely_draws = (word_draws, partner_draws) if favours == "word" else (partner_draws, word_draws)
    tested = len(word_draws) - half
    p_low = clopper_pearson_lower(int(np.isin(likely_draws[half:], event).sum()), tested, alpha)
    q_high = clopper_pearson_upper(int(np.isin(unlikely_draws[half:], event).sum()), tested, alpha)
    return float(epsilon_from_bounds(p_low, q_high, distance, delta)), favours, len(event), p_low, q_high


def epsilon_from_bounds(p_low: Any, q_high: Any, distance: float, delta: float = 0.0) -> Any:
    """The smallest epsilon per unit distance consistent with
    P[M(x) in S] >= p_low and P[M(x') in S] <= q_high under
    P[M(x) in S] <= e^(eps d) P[M(x') in S] + (1 + e^(eps d)) delta:
    ln((p_low - delta) / (q_high + delta)) / d, and 0 where that is negative."""
    p_low, q_high = np.asarray(p_low, dtype=np.float64), np.asarray(q_high, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.log(np.maximum(p_low - delta, 0) / (q_high + delta))
    bound = np.where(ratio > 0, ratio, 0.0)
    bound = bound / distance if distance > 0 else np.where(bound > 0, np.inf, 0.0)
    return bound if bound.ndim else float(bound)


def _wilson(successes: np.ndarray, trials: int, z: float) -> np.ndarray:
    """Wilson score bound (lower for z < 0, upper for z > 0): a cheap stand-in
    for Clopper-Pearson when choosing events on the selection half."""
    p = successes / trials
    centre = p + z * z / (2 * trials)
    spread = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return np.clip((centre + spread) / (1 + z * z / trials), 0.0, 1.0)


# ---------------------------------------------------------------------------
# Clopper-Pearson bounds, from the regularized incomplete beta function.

def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) = P[Beta(a, b) <= x], by its continued fraction (modified
    Lentz, as in Numerical Recipes' betacf), on the side where it converges."""
    if not (a > 0 and b > 0):
        raise ValueError(f"the beta function needs a, b > 0; got a={a!r}, b={b!r}")
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = a * math.log(x) + b * math.log1p(-x) + math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    # Converges in O(sqrt(max(a, b))) terms on this side of the mean.
    for m in range(1, 10_000 + int(10 * math.sqrt(max(a, b)))):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            return fraction
    raise ArithmeticError(f"the incomplete beta fraction did not converge (a={a}, b={b}, x={x})")


def beta_quantile(q: float, a: float, b: float) -> float:
    """The x with I_x(a, b) = q, by bisection (I is increasing in x), to the
    last bit for any x the audit meets (down to ~1e-45)."""
    if not 0 <= q <= 1:
        raise ValueError(f"q must be in [0, 1], got {q!r}")
    low, high = 0.0, 1.0
    for _ in range(200):
        middle = (low + high) / 2
        if middle in (low, high):
            break
        if regularized_incomplete_beta(a, b, middle) < q:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def clopper_pearson_lower(successes: int, trials: int, alpha: float) -> float:
    """One-sided lower confidence bound, level 1 - alpha, on a binomial
    probability: P[Bin(trials, p) >= successes] = alpha, i.e. the alpha
    quantile of Beta(successes, trials - successes + 1)."""
    _check_binomial(successes, trials, alpha)
    if successes == 0:
        return 0.0
    if successes == trials:
        return alpha ** (1 / trials)
    return beta_quantile(alpha, successes, trials - successes + 1)


def clopper_pearson_upper(successes: int, trials: int, alpha: float) -> float:
    """One-sided upper confidence bound, level 1 - alpha: the lower bound of
    the failure probability, mirrored (so the quantile sought is always a
    small tail, where bisection on I is most precise)."""
    _check_binomial(successes, trials, alpha)
    return 1.0 - clopper_pearson_lower(trials - successes, trials, alpha)


def _check_binomial(successes: int, trials: int, alpha: float) -> None:
    if not 0 <= successes <= trials or trials < 1:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1; got {successes}, {trials}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def normal_upper_quantile(alpha: float) -> float:
    """z with P[N(0, 1) > z] = alpha, by bisection on erfc."""
    low, high = -40.0, 40.0
    for _ in range(200):
        middle = (low + high) / 2
        if middle in (low, high):
            break
        if 0.5 * math.erfc(middle / math.sqrt(2)) > alpha:
            low = middle
        else:
            high = middle
    return (low + high) / 2


# ---------------------------------------------------------------------------
# Reports: the printed block, CSV tables and the plot.

def report(result: AuditResult) -> str:
    """The block the command line prints: what is booked, what was measured."""
    unit = "per unit distance" if result.guarantee.metric != WITHIN_SETS else "within a set"
    if result.method == "exact":
        how = (f"exact law, worst case over outputs, {result.pairs} pairs "
               f"({result.counted_pairs} counted) of {result.words} sampled words")
        measured = f"loss {_number(result.loss)} {unit}"
        if result.infinite_pairs:
            measured += f" ({result.infinite_pairs} of {result.counted_pairs} pairs infinite)"
    else:
        how = (f"{result.draws:,} keyed draws per word, {result.pairs} pairs of {result.words} sampled words; "
               f"lower bounds hold together at {result.confidence:.0%} confidence")
        measured = f"loss >= {_number(result.loss)} {unit}"
    lines = [
        f"audit of {result.mechanism}, epsilon {result.epsilon:g}",
        f"  books:    {result.guarantee.statement}",
        f"  method:   {how}",
        f"  measured: {measured}",
    ]
    if result.worst_pair:
        worst = worst_row(result.table)
        where = ("same output set" if result.guarantee.kind == "within_sets"
                 else f"distance {result.worst_distance:.4g}")
        lines.append(f"  worst:    {result.worst_pair[0]} / {result.worst_pair[1]}, {where}")
        if result.method == "exact":
            output = worst["worst_output"]
            lines.append(f"            P[{output} | {worst['word']}] = {_probability(worst['log_p_word'])}, "
                         f"P[{output} | {worst['partner']}] = {_probability(worst['log_p_partner'])}")
        else:
            likely, unlikely = ((worst["word"], worst["partner"]) if worst["favours"] == "word"
                                else (worst["partner"], worst["word"]))
            outputs = "1 output" if worst["event_size"] == 1 else f"{worst['event_size']} outputs"
            lines.append(f"            an event S of {outputs}: P[S | {likely}] >= "
                         f"{worst['p_low']:.4g}, P[S | {unlikely}] <= {worst['q_high']:.4g}")
    if result.total_variations:
        each = ", ".join(f"{w} {tv:.3g}" for w, tv in result.total_variations.items())
        lines.append(f"  chain:    total variation to the exact law: max {result.max_total_variation:.3g} ({each})")
    if not result.guarantee.holds:
        verdict = "nothing is claimed, so nothing to refute"
    elif result.refuted:
        verdict = f"REFUTED: the measured loss exceeds the claimed epsilon {result.guarantee.epsilon:g}"
    else:
        verdict = f"not refuted (claimed epsilon {result.guarantee.epsilon:g})"
    lines += [f"  verdict:  {verdict}", f"  time:     {result.seconds:.1f} s"]
    return "\n".join(lines)


def _number(value: float) -> str:
    return "inf" if math.isinf(value) else "n/a (no pair counted)" if math.isnan(value) else f"{value:.4g}"


def _probability(log_p: float) -> str:
    if log_p == -math.inf:
        return "0"
    return f"{math.exp(log_p):.3g}" if log_p > -700 else f"e^{log_p:.4g}"


def write_outputs(results: Sequence[AuditResult], directory: str | Path,
                  labels: Sequence[str] | None = None) -> list[Path]:
    """audit_pairs.csv (every pair of every result), audit_summary.csv (one
    row per result) and audit.png (``plot``) under ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pairs = pd.concat([r.table.assign(mechanism=r.mechanism, epsilon=r.epsilon) for r in results], ignore_index=True)
    written = [directory / "audit_pairs.csv", directory / "audit_summary.csv", directory / "audit.png"]
    pairs.to_csv(written[0], index=False)
    pd.DataFrame([r.to_record() for r in results]).to_csv(written[1], index=False)
    written[2].write_bytes(plot(results, labels))
    return written


def plot(results: Sequence[AuditResult], labels: Sequence[str] | None = None) -> bytes:
    """PNG: per audited mechanism, the claimed epsilon against the measured
    loss per unit distance (log scale). Exact losses are dots, sampled lower
    bounds triangles; red where the claim is refuted, grey where nothing is
    claimed; an infinite loss is drawn at the top, a zero one at the bottom,
    each labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    labels = list(labels) if labels is not None else [f"{r.mechanism}\neps {r.epsilon:g}" for r in results]
    # Narrow lines, so that neighbouring labels never run into each other.
    labels = ["\n".join(textwrap.fill(line, 18, break_long_words=False) for line in label.split("\n"))
              for label in labels]
    values = [v for r in results for v in (r.loss, r.guarantee.epsilon) if v is not None and 0 < v < math.inf]
    low = min(values, default=1.0) / 4
    high = max(values, default=1.0) * 4
    top, bottom = high * 3, low / 3  # where infinite and zero losses are drawn
    figure, axis = plt.subplots(figsize=(max(7.5, 1.5 * len(results) + 1.5), 5.6), constrained_layout=True)
    for x, result in enumerate(results):
        if result.guarantee.holds:
            axis.plot([x - 0.3, x + 0.3], [result.guarantee.epsilon] * 2, color="black", linewidth=2.5)
        else:
            axis.annotate("no claim", (x, bottom), xytext=(0, 8), textcoords="offset points", ha="center",
                          fontsize=8, color="dimgrey")
        colour = "dimgrey" if not result.guarantee.holds else "tab:red" if result.refuted else "tab:green"
        marker = "o" if result.method == "exact" else "^"
        loss = result.loss
        if math.isnan(loss):
            continue
        shown = top if math.isinf(loss) else bottom if loss <= 0 else loss
        axis.plot([x], [shown], marker=marker, markersize=10, color=colour, linestyle="none")
        if math.isinf(loss) or loss <= 0:
            axis.annotate("inf" if loss > 0 else "0", (x, shown), xytext=(9, -4), textcoords="offset points",
                          fontsize=9, color=colour)
        if result.max_total_variation is not None:
            axis.annotate(f"max TV {result.max_total_variation:.2g}", (x, shown), xytext=(0, -20),
                          textcoords="offset points", ha="center", fontsize=8, color=colour)
    axis.set_yscale("log")
    axis.set_ylim(bottom / 2, top * 2.5)
    # No finite scale inside the band of infinite losses.
    axis.set_yticks([t for t in axis.get_yticks() if bottom / 2 <= t < top / 1.7])
    axis.yaxis.set_minor_locator(matplotlib.ticker.LogLocator(subs="auto", numticks=12))
    axis.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axis.axhspan(top / 1.7, top * 2.5, color="0.93", zorder=0)
    axis.text(0.995, top * 1.9, "infinite loss ", transform=axis.get_yaxis_transform(), ha="right", va="top",
              fontsize=8, color="dimgrey")
    axis.set_xlim(-0.7, len(results) - 0.3)
    axis.set_xticks(range(len(results)), labels, fontsize=8)
    axis.set_ylabel("privacy loss per unit distance (log scale)")
    axis.grid(True, axis="y", which="major", alpha=0.3)
    handles = [
        plt.Line2D([], [], color="black", linewidth=2.5, label="claimed epsilon"),
        plt.Line2D([], [], marker="o", color="0.4", linestyle="none", label="measured: exact worst case"),
        plt.Line2D([], [], marker="^", color="0.4", linestyle="none", label="measured: lower bound"),
        plt.Line2D([], [], marker="s", color="tab:red", linestyle="none", label="refuted"),
        plt.Line2D([], [], marker="s", color="tab:green", linestyle="none", label="not refuted"),
        plt.Line2D([], [], marker="s", color="dimgrey", linestyle="none", label="nothing claimed"),
    ]
    figure.legend(handles=handles, fontsize=8, loc="outside lower center", ncol=3)
    axis.set_title("Privacy audit: claimed epsilon against measured loss", fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


# ---------------------------------------------------------------------------
# Command line: ``python -m dp_spark audit``.

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mechanism", required=True, help="mechanism name, e.g. tgumbel")
    parser.add_argument("--epsilon", type=float, required=True, help="privacy parameter per token")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="mechanism parameter, e.g. sampler=mh (repeatable)")
    parser.add_argument("--vocab-size", type=int, default=100_000,
                        help="most frequent GloVe entries to load before keeping words only")
    parser.add_argument("--words", type=int, help="vocabulary words to sample (default: "
                        + ", ".join(f"{m} {n}" for m, n in DEFAULT_WORDS.items()) + ")")
    parser.add_argument("--neighbours-per-word", type=int, help="pairs per sampled word (default: "
                        + ", ".join(f"{m} {n}" for m, n in DEFAULT_NEIGHBOURS.items()) + ")")
    parser.add_argument("--draws", type=int, default=AuditSettings.draws, help="draws per word (sampled method)")
    parser.add_argument("--confidence", type=float, default=AuditSettings.confidence,
                        help="confidence of the lower bounds, all pairs together (sampled method)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the word sample and the draws (public)")
    parser.add_argument("--output", help="directory for audit_pairs.csv, audit_summary.csv and audit.png")
    parser.add_argument("--config", help="a config whose [embeddings] and [index] to audit on (an artifact, say)")
    parser.add_argument("--spark", action="store_true", help="spread the pairs over Spark tasks (large audits)")
    parser.add_argument("--master", help="with --spark: Spark master for a local classic session")
    parser.add_argument("--remote", help="with --spark: Spark Connect URL (default $SPARK_REMOTE)")


def run_from_arguments(args: argparse.Namespace) -> int:
    """Audit one mechanism on the default embeddings (words only, as the job
    uses them): exit status 0 when not refuted, 3 when refuted; a bad flag or
    parameter raises ``ConfigError`` (status 2 from the command line)."""
    from dp_spark.config import Config, EmbeddingsConfig, load_config
    from dp_spark.resources import Runtime, artifact_for, complete_params

    try:
        params = parse_params(args.param)
        settings = AuditSettings(words=args.words, neighbours_per_word=args.neighbours_per_word,
                                 draws=args.draws, confidence=args.confidence, seed=args.seed)
        config = load_config(args.config, "build") if args.config else Config(
            embeddings=EmbeddingsConfig(vocab_size=args.vocab_size))
        params = complete_params(args.mechanism, params, config.index.type)
        runtime = Runtime(artifact_for(config.embeddings, config.index, [(args.mechanism, params)]))
        mechanism = runtime.mechanism(args.mechanism, args.epsilon, params)
    except ConfigError:
        raise
    except ValueError as error:
        raise ConfigError(str(error)) from error
    if args.spark:
        from dp_spark.spark.audit import audit_on_spark
        from dp_spark.spark.session import session

        with session("dp-spark audit", args.master, args.remote) as spark:
            result = audit_on_spark(spark, runtime, args.mechanism, args.epsilon, params, settings)
    else:
        result = audit(mechanism, settings)
    embeddings = runtime.embeddings
    print(f"embeddings: artifact {runtime.artifact.id}, {embeddings.size:,} words")
    print(report(result))
    if args.output:
        label = " ".join([args.mechanism, *args.param]) + f"\neps {args.epsilon:g}"
        for path in write_outputs([result], args.output, [label]):
            print(f"  wrote     {path}")
    return 3 if result.refuted else 0


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """KEY=VALUE strings to parameters: integers, floats, true/false/none, or text."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param expects KEY=VALUE, got {item!r}")
        params[key.strip()] = parse_value(text.strip())
    return params
