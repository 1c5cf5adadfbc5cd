"""Privacy accounting across runs: which releases of which data exist, and
whether a new run would compose with them.

Each run records, per (dataset, partition, column), the epsilon per token it
spent, a fingerprint of its seed and how rows were keyed. Re-running with the
same seed replays the same noise (identical output, nothing new released) when
rows are keyed by an id column, or, keyed by position, when the run reads the
very same partition selection; otherwise the noise is fresh, and the privacy
losses add up.
"""

from __future__ import annotations

from dataclasses import dataclass

WHOLE_DATASET = "*"
POSITION_KEY = "position"


def row_key_label(id_column: str | None) -> str:
    return f"id:{id_column}" if id_column else POSITION_KEY


def partition_label(partitions: dict[str, str]) -> str:
    """``ds=2026-11-22/region=eu``, or ``*`` for the whole dataset."""
    return "/".join(f"{k}={v}" for k, v in sorted(partitions.items())) or WHOLE_DATASET


def partitions_overlap(first: str, second: str) -> bool:
    """Whether two partition labels can share rows: unless some key has a
    different value in each, they can."""
    if WHOLE_DATASET in (first, second):
        return True
    a = dict(part.split("=", 1) for part in first.split("/"))
    b = dict(part.split("=", 1) for part in second.split("/"))
    return all(a[k] == b[k] for k in a.keys() & b.keys())


@dataclass(frozen=True)
class LedgerEntry:
    run_id: str
    dataset: str
    partition: str
    column: str
    output_column: str
    mechanism: str
    epsilon: float
    seed_fingerprint: str
    row_key: str
    recorded_at: str

    def replays(self, release: "Release", fingerprint: str, row_key: str, partition: str) -> bool:
        """Whether this earlier release is exactly what the new one would draw
        again: same seed, keying, output column, mechanism and epsilon, and for
        position keys the same partition selection."""
        if (self.seed_fingerprint, self.row_key) != (fingerprint, row_key):
            return False
        if (self.output_column, self.mechanism, self.epsilon) != (
            release.output_column, release.mechanism, release.epsilon
        ):
            return False
        return row_key != POSITION_KEY or self.partition == partition


@dataclass(frozen=True)
class Release:
    """One perturbation a run is about to release: an input column, where
    it goes, and the mechanism and epsilon per token."""

    column: str
    output_column: str
    mechanism: str
    epsilon: float


class RecompositionRefused(RuntimeError):
    """The run would release data again with fresh noise."""


def earlier_releases(
    entries: list[LedgerEntry],
    dataset: str,
    partition: str,
    column: str,
    releases: list[Release],
    fingerprint: str,
    row_key: str,
) -> list[LedgerEntry]:
    """Earlier entries for the same data and column that none of this run's
    releases replays: fresh noise on top of them composes."""
    return [
        e
        for e in entries
        if e.dataset == dataset
        and e.column == column
        and partitions_overlap(e.partition, partition)
        and not any(e.replays(r, fingerprint, row_key, partition) for r in releases)
    ]


def composed_epsilon(earlier: list[LedgerEntry], epsilon: float) -> float:
    """Epsilon per token after this run: one term per distinct earlier release
    (runs that replayed one another's noise count once)."""
    distinct = {(e.partition, e.seed_fingerprint, e.row_key, e.output_column, e.mechanism, e.epsilon)
                for e in earlier}
    return epsilon + sum(release[-1] for release in distinct)


def check_recomposition(
    entries: list[LedgerEntry],
    dataset: str,
    partition: str,
    releases: list[Release],
    fingerprint: str,
    row_key: str,
    allow: bool,
) -> dict[str, float]:
    """Epsilon per token each input column will have spent after this run
    (several releases of one column in a run add up); raises
    ``RecompositionRefused`` if a release would compose with earlier runs'
    and ``allow`` is False."""
    this_run: dict[str, float] = {}
    for release in releases:
        this_run[release.column] = this_run.get(release.column, 0.0) + release.epsilon
    totals = {}
    problems = []
    for column, epsilon in this_run.items():
        mine = [r for r in releases if r.column == column]
        earlier = earlier_releases(entries, dataset, partition, column, mine, fingerprint, row_key)
        totals[column] = composed_epsilon(earlier, epsilon)
        if earlier and not allow:
            first = earlier[0]
            problems.append(
                f"column {column!r}: run {first.run_id} ({first.recorded_at}) already released "
                f"partition {first.partition} into {first.output_column!r} with {first.mechanism} "
                f"at epsilon {first.epsilon:g} "
                f"per token ({len(earlier)} earlier release(s) with other noise); another release "
                f"with fresh noise makes the total {totals[column]:g}"
            )
    if problems:
        raise RecompositionRefused(
            f"refusing to perturb dataset {dataset!r} partition {partition} again with fresh "
            "noise:\n  " + "\n  ".join(problems) + "\nRe-run with the same --seed (and the same "
            "row keying and partition selection) to replay the earlier output with no new "
            "privacy loss, or pass --allow-recompose to accept the composed privacy loss."
        )
    return totals
