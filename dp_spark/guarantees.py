"""What a release promises: the privacy guarantee each mechanism really
provides, as a typed value the job books, the ledger composes and the
auditor checks.

Every guarantee here has the form of metric differential privacy for some
metric d on words: for all inputs x, x' and every set S of outputs,

    P[M(x) in S] <= e^(epsilon d(x, x')) P[M(x') in S] + delta_term(d),

with delta_term = 0 for a pure guarantee. The mechanisms use four kinds:

- ``pure``: epsilon-d (mlap, tem, santext, kde exact: Euclidean d;
  mahalanobis: the regularised Mahalanobis d_RM);
- ``approximate``: distance truncation (``max_distance`` R) of mlap and
  mahalanobis: delta_R = Q(n, epsilon R) and
  delta_term(d) = (1 + e^(epsilon d)) delta_R (Feyisetan et al., FLAIRS 2021);
- ``within_sets``: epsilon-LDP among the words of one output set (custext
  conservative), that is epsilon-d for d = 0/1 inside a set and infinite
  across sets: words of different sets are not protected against each other;
- ``none``: nothing is promised (tgumbel, santext+, custext aggressive, kde
  with the Metropolis-Hastings sampler, any custom mechanism); such a
  release runs only where the column's config accepts it explicitly.

A row of m perturbed tokens composes to (sum of epsilons) times the summed
word distances, and k releases of the same data with independent noise add
their epsilons and deltas (basic composition): ``compose``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

KINDS = ("pure", "approximate", "within_sets", "none")

EUCLIDEAN = "euclidean"
WITHIN_SETS = "0/1 within an output set, unbounded across sets"


@dataclass(frozen=True)
class Guarantee:
    """One token's guarantee: ``kind`` (see the module), ``epsilon`` per unit
    of ``metric`` (None for ``none``), ``delta`` (delta_R of the coupling bound,
    0 when pure), and a one-line ``statement`` in words."""

    kind: str
    epsilon: float | None = None
    delta: float = 0.0
    metric: str | None = None
    statement: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"guarantee kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        if self.kind == "none":
            if self.epsilon is not None or self.delta:
                raise ValueError("a 'none' guarantee has no epsilon or delta")
        elif self.epsilon is None or not self.epsilon > 0 or not math.isfinite(self.epsilon):
            raise ValueError(f"a {self.kind} guarantee needs a positive finite epsilon, got {self.epsilon!r}")
        if not 0.0 <= self.delta <= 1.0:
            raise ValueError(f"delta must be in [0, 1], got {self.delta!r}")

    @classmethod
    def pure(cls, epsilon: float, metric: str = EUCLIDEAN) -> "Guarantee":
        return cls("pure", epsilon, 0.0, metric, f"{epsilon:g}-d_X, d = {metric} distance")

    @classmethod
    def approximate(cls, epsilon: float, delta: float, metric: str = EUCLIDEAN) -> "Guarantee":
        return cls(
            "approximate", epsilon, delta, metric,
            f"({epsilon:g}, {delta:.3g})-d_X, d = {metric} distance: "
            f"P[M(x) in S] <= e^(eps d) P[M(x') in S] + (1 + e^(eps d)) delta",
        )

    @classmethod
    def within_sets(cls, epsilon: float) -> "Guarantee":
        return cls("within_sets", epsilon, 0.0, WITHIN_SETS,
                   f"{epsilon:g}-LDP among the words of one output set; none across sets")

    @classmethod
    def none(cls, reason: str) -> "Guarantee":
        return cls("none", None, 0.0, None, f"no guarantee: {reason}")

    @property
    def holds(self) -> bool:
        """Whether anything is promised at all."""
        return self.kind != "none"

    def bound(self, distance: float) -> float:
        """The largest log ratio ln(P[M(x) in S] / P[M(x') in S]) this
        guarantee allows for inputs ``distance`` apart, on events whose
        probability under x exceeds the delta term (inf when none)."""
        if not self.holds:
            return math.inf
        return self.epsilon * distance

    def to_record(self) -> dict[str, Any]:
        """Flat fields for statistics tables, the ledger and manifests."""
        return {
            "guarantee": self.kind,
            "guarantee_epsilon": self.epsilon,
            "guarantee_delta": self.delta,
            "guarantee_metric": self.metric,
            "guarantee_statement": self.statement,
        }


@dataclass(frozen=True)
class Composition:
    """Several releases of the same rows, each with its own noise: epsilons
    and deltas add up per token (basic composition). ``metrics`` lists the
    distances the epsilons are per unit of (one epsilon when they agree, a
    sum of terms eps_i d_i otherwise); ``unprotected`` counts releases that
    promised nothing, after which no total bounds what was released."""

    epsilon: float
    delta: float
    metrics: tuple[str, ...]
    releases: int
    unprotected: int

    @property
    def bounded(self) -> bool:
        return self.unprotected == 0


def compose(guarantees: Iterable[Guarantee]) -> Composition:
    guarantees = list(guarantees)
    held = [g for g in guarantees if g.holds]
    return Composition(
        epsilon=float(sum(g.epsilon for g in held)),
        delta=min(1.0, float(sum(g.delta for g in held))),
        metrics=tuple(sorted({g.metric for g in held})),
        releases=len(guarantees),
        unprotected=len(guarantees) - len(held),
    )
