"""Privacy accounting across runs: which releases of which data exist, and
what a new run adds to them.

Each run records, per (dataset, partition selection, column), every release
it makes: the mechanism and epsilon, a public fingerprint of the whole
release (mechanism, parameters, columns, row keying, vocabulary), a one-way
fingerprint of the seed, and the guarantee the mechanism provides. Two
releases draw the same noise only when seed and release fingerprint agree
(and, for position-keyed rows, the partition selection too): such a repeat
replays identical output and costs nothing. Any other release over the same
rows composes: per row, the epsilons and deltas of the distinct releases
that contain it add up (basic composition), and a release without a
guarantee leaves the row's total unbounded.

Rows are located by partition selections (``ds=2026-11-22``, or the whole
dataset): the total of a run is the largest over the rows it selects, so two
runs on separate partitions at 12 each and a third over everything make 24
for every row, not 36.

A run's entries are first recorded as pending, before any table changes; a
pending entry counts as released until the run commits it or rolls it back.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any, Iterable

from dp_spark.errors import PrivacyRefusal
from dp_spark.guarantees import Guarantee, compose

WHOLE_DATASET = "*"
POSITION_KEY = "position"
PENDING, COMMITTED, ROLLED_BACK = "pending", "committed", "rolled_back"
# Beyond this many row cells, the total is bounded by summing every
# overlapping release instead of maximising over cells (never less safe).
MAX_CELLS = 100_000


def row_key_label(id_column: str | None) -> str:
    return f"id:{id_column}" if id_column else POSITION_KEY


def partition_label(partitions: dict[str, Any]) -> str:
    """``ds=2026-11-22/region=eu``, or ``*`` for the whole dataset (for display)."""
    return "/".join(f"{k}={v}" for k, v in sorted(partitions.items())) or WHOLE_DATASET


def canonical_partition(partitions: dict[str, Any]) -> str:
    """The partition selection as canonical JSON of typed values (the key the
    ledger compares: ``rating=5`` and ``rating=05`` on an int column are one)."""
    return json.dumps(partitions, sort_keys=True, separators=(",", ":"))


def overlaps(first: dict[str, Any], second: dict[str, Any]) -> bool:
    """Whether two selections can share rows: unless some key has a different value in each."""
    return all(first[k] == second[k] for k in first.keys() & second.keys())


def covers(outer: dict[str, Any], inner: dict[str, Any]) -> bool:
    """Whether every row of selection ``inner`` is also in ``outer``."""
    return all(k in inner and inner[k] == v for k, v in outer.items())


@dataclass(frozen=True)
class Release:
    """One perturbation a run is about to release."""

    column: str
    output_column: str
    mechanism: str
    epsilon: float
    release_fingerprint: str
    guarantee: Guarantee


@dataclass(frozen=True)
class LedgerEntry:
    run_id: str
    dataset: str
    partition: str  # canonical JSON of the typed selection, "{}" for the whole dataset
    column: str
    output_column: str
    mechanism: str
    epsilon: float
    release_fingerprint: str
    seed_fingerprint: str
    row_key: str
    guarantee: str
    guarantee_epsilon: float | None
    guarantee_delta: float
    guarantee_metric: str | None
    recorded_at: str
    status: str = COMMITTED

    @property
    def selection(self) -> dict[str, Any]:
        return json.loads(self.partition)

    @property
    def noise(self) -> tuple:
        """What identifies this release's noise: equal only for replays."""
        if self.row_key == POSITION_KEY:
            return (self.seed_fingerprint, self.release_fingerprint, self.partition)
        return (self.seed_fingerprint, self.release_fingerprint)

    def booked(self) -> Guarantee:
        if self.guarantee == "none":
            return Guarantee.none("booked without a guarantee")
        return Guarantee(self.guarantee, self.guarantee_epsilon, self.guarantee_delta, self.guarantee_metric)

    @classmethod
    def of(cls, release: Release, *, run_id: str, dataset: str, partition: str, seed_fingerprint: str,
           row_key: str, recorded_at: str, status: str = PENDING) -> "LedgerEntry":
        return cls(run_id, dataset, partition, release.column, release.output_column, release.mechanism,
                   release.epsilon, release.release_fingerprint, seed_fingerprint, row_key,
                   release.guarantee.kind, release.guarantee.epsilon, release.guarantee.delta,
                   release.guarantee.metric, recorded_at, status)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ColumnTotal:
    """What a column's rows will have received after a run, at the worst row
    it selects: ``epsilon`` and ``delta`` summed over the distinct releases
    with a guarantee (per unit of ``metrics``), ``unprotected`` releases
    without one (then no total bounds the release), and the earlier releases
    with other noise that the run composes with."""

    epsilon: float
    delta: float
    metrics: tuple[str, ...]
    unprotected: int
    earlier: tuple[LedgerEntry, ...] = field(default=())

    @property
    def bounded(self) -> bool:
        return self.unprotected == 0


class RecompositionRefused(PrivacyRefusal):
    """The run would release data again with fresh noise."""


def plan_run(
    entries: Iterable[LedgerEntry],
    dataset: str,
    partition: dict[str, Any],
    releases: list[Release],
    seed_fingerprint: str,
    row_key: str,
    allow_recompose: bool,
) -> dict[str, ColumnTotal]:
    """The total per input column after this run's releases; raises
    ``RecompositionRefused`` if a release would compose with earlier ones
    (other noise over some of the same rows) and ``allow_recompose`` is False."""
    selection = canonical_partition(partition)
    active = [e for e in entries if e.status != ROLLED_BACK and e.dataset == dataset]
    totals: dict[str, ColumnTotal] = {}
    problems = []
    for column in dict.fromkeys(r.column for r in releases):
        mine = [LedgerEntry.of(r, run_id="(this run)", dataset=dataset, partition=selection,
                               seed_fingerprint=seed_fingerprint, row_key=row_key, recorded_at="")
                for r in releases if r.column == column]
        earlier = [e for e in active if e.column == column and overlaps(e.selection, partition)]
        # A release whose noise was already released over all of these rows replays it: nothing new.
        new = [m for m in mine
               if not any(e.noise == m.noise and covers(e.selection, partition) for e in earlier)]
        fresh = [e for e in earlier if e.noise not in {m.noise for m in mine}] if new else []
        totals[column] = column_total([*earlier, *mine], partition, fresh)
        if fresh and not allow_recompose:
            first = fresh[0]
            total = totals[column]
            problems.append(
                f"column {column!r}: run {first.run_id} ({first.recorded_at or 'pending'}) already released "
                f"partition {partition_label(first.selection)} into {first.output_column!r} with "
                f"{first.mechanism} at epsilon {first.epsilon:g} per token ({len(fresh)} earlier release(s) "
                f"with other noise); another release with fresh noise makes the total "
                + (f"{total.epsilon:g}" if total.bounded else "unbounded (a release without a guarantee)")
            )
    if problems:
        raise RecompositionRefused(
            f"refusing to perturb dataset {dataset!r} partition {partition_label(partition)} again with "
            "fresh noise: " + "; ".join(problems) + ". To replay the earlier output with no new privacy "
            "loss, re-run with the same secret seed (--seed-file or DP_SPARK_SEED) and the same "
            "configuration; to accept the composed loss, pass --allow-recompose"
        )
    return totals


def column_total(entries: list[LedgerEntry], selection: dict[str, Any],
                 fresh: list[LedgerEntry] = ()) -> ColumnTotal:
    """The largest composition over the rows ``selection`` covers: per row,
    the distinct releases (by noise) whose selections contain it."""
    keys = sorted({k for e in entries for k in e.selection} - set(selection))
    candidates = [sorted({json.dumps(e.selection[k]) for e in entries if k in e.selection}) + [None]
                  for k in keys]
    cells = 1
    for values in candidates:
        cells *= len(values)
    if cells > MAX_CELLS:
        worst = _compose_distinct(entries)
        return ColumnTotal(*worst, earlier=tuple(fresh))
    best = None
    for values in itertools.product(*candidates):
        row = {**selection, **{k: json.loads(v) for k, v in zip(keys, values) if v is not None}}
        free = {k for k, v in zip(keys, values) if v is None}
        inside = [e for e in entries
                  if all(k not in free and row.get(k) == v for k, v in e.selection.items())]
        total = _compose_distinct(inside)
        if best is None or (total[3], total[0], total[1]) > (best[3], best[0], best[1]):
            best = total
    return ColumnTotal(*best, earlier=tuple(fresh))


def _compose_distinct(entries: list[LedgerEntry]) -> tuple[float, float, tuple[str, ...], int]:
    distinct = {e.noise: e for e in entries}
    composition = compose(e.booked() for e in distinct.values())
    return composition.epsilon, composition.delta, composition.metrics, composition.unprotected
