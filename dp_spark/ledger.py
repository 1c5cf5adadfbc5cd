"""Privacy accounting across runs: which releases of which data exist, and
whether a new run would compose with them.

Each run records, per (dataset, partition, column), the epsilon per token it
spent and a fingerprint of its seed. Re-running with the same seed replays
the same noise (identical output, nothing new released); a different seed
releases fresh noise, and the privacy losses add up.
"""

from __future__ import annotations

from dataclasses import dataclass

WHOLE_DATASET = "*"


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
    mechanism: str
    epsilon: float
    seed_fingerprint: str
    recorded_at: str


class RecompositionRefused(RuntimeError):
    """The run would release data again with fresh noise."""


def earlier_releases(
    entries: list[LedgerEntry], dataset: str, partition: str, column: str, fingerprint: str
) -> list[LedgerEntry]:
    """Entries for the same data and column with another seed (fresh noise)."""
    return [
        e
        for e in entries
        if e.dataset == dataset
        and e.column == column
        and e.seed_fingerprint != fingerprint
        and partitions_overlap(e.partition, partition)
    ]


def composed_epsilon(earlier: list[LedgerEntry], epsilon: float) -> float:
    """Epsilon per token after this run: one term per distinct seed released."""
    by_seed = {(e.partition, e.seed_fingerprint): e.epsilon for e in earlier}
    return epsilon + sum(by_seed.values())


def check_recomposition(
    entries: list[LedgerEntry],
    dataset: str,
    partition: str,
    columns: dict[str, float],
    fingerprint: str,
    allow: bool,
) -> dict[str, float]:
    """Epsilon per token each column will have spent after this run; raises
    ``RecompositionRefused`` if any would compose and ``allow`` is False."""
    totals = {}
    problems = []
    for column, epsilon in columns.items():
        earlier = earlier_releases(entries, dataset, partition, column, fingerprint)
        totals[column] = composed_epsilon(earlier, epsilon)
        if earlier and not allow:
            first = earlier[0]
            problems.append(
                f"column {column!r}: run {first.run_id} ({first.recorded_at}) already released "
                f"partition {first.partition} with {first.mechanism} at epsilon {first.epsilon:g} "
                f"per token ({len(earlier)} earlier release(s) with other seeds); another release "
                f"with fresh noise makes the total {totals[column]:g}"
            )
    if problems:
        raise RecompositionRefused(
            f"refusing to perturb dataset {dataset!r} partition {partition} again with a new "
            "seed:\n  " + "\n  ".join(problems) + "\nRe-run with the same --seed to replay the "
            "earlier output (no new privacy loss), or pass --allow-recompose to accept the "
            "composed privacy loss."
        )
    return totals
