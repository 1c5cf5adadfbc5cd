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
    mechanism: str
    epsilon: float
    seed_fingerprint: str
    row_key: str
    recorded_at: str

    def replayed_by(self, fingerprint: str, row_key: str, partition: str) -> bool:
        """Whether a run with this seed, keying and partition draws the same noise."""
        if self.seed_fingerprint != fingerprint or self.row_key != row_key:
            return False
        return row_key != POSITION_KEY or self.partition == partition


class RecompositionRefused(RuntimeError):
    """The run would release data again with fresh noise."""


def earlier_releases(
    entries: list[LedgerEntry], dataset: str, partition: str, column: str, fingerprint: str, row_key: str
) -> list[LedgerEntry]:
    """Entries for the same data and column that this run would not replay."""
    return [
        e
        for e in entries
        if e.dataset == dataset
        and e.column == column
        and partitions_overlap(e.partition, partition)
        and not e.replayed_by(fingerprint, row_key, partition)
    ]


def composed_epsilon(earlier: list[LedgerEntry], epsilon: float) -> float:
    """Epsilon per token after this run: one term per distinct seed released."""
    by_seed = {(e.partition, e.seed_fingerprint, e.row_key): e.epsilon for e in earlier}
    return epsilon + sum(by_seed.values())


def check_recomposition(
    entries: list[LedgerEntry],
    dataset: str,
    partition: str,
    columns: dict[str, float],
    fingerprint: str,
    row_key: str,
    allow: bool,
) -> dict[str, float]:
    """Epsilon per token each column will have spent after this run; raises
    ``RecompositionRefused`` if any would compose and ``allow`` is False."""
    totals = {}
    problems = []
    for column, epsilon in columns.items():
        earlier = earlier_releases(entries, dataset, partition, column, fingerprint, row_key)
        totals[column] = composed_epsilon(earlier, epsilon)
        if earlier and not allow:
            first = earlier[0]
            problems.append(
                f"column {column!r}: run {first.run_id} ({first.recorded_at}) already released "
                f"partition {first.partition} with {first.mechanism} at epsilon {first.epsilon:g} "
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
