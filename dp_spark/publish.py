"""Staging and publishing a run's outputs so that they go live together, and
recovering from a run that was killed half-way.

A run writes everything into ``<root>/_staging-<run id>/``. When the staged
writes are complete it writes a journal there: the list of moves that put
them in place (the table, or each partition of it it replaces, and the files
it appends to the statistics tables), each with where the displaced version
goes. Publishing performs the moves in order; every move is idempotent
(redoing a finished move does nothing), so a publish interrupted anywhere can
be finished by running it again. The next run on the root, holding its lock,
finds the interrupted run's staging folder and:
- with a journal: finishes the publish and commits the run's ledger entry
  (its release is, or is about to be, live);
- without one: removes the staging folder and rolls the pending ledger entry
  back (nothing of it went live).
Either way the interrupted run's manifest says what happened.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from dp_spark import storage
from dp_spark.ledger import COMMITTED, ROLLED_BACK
from dp_spark.ledger_store import LedgerStore

log = logging.getLogger(__name__)

STAGING_PREFIX = "_staging-"
JOURNAL = "journal.json"


@dataclass(frozen=True)
class Move:
    """Put ``source`` at ``target``; whatever was at ``target`` goes to ``backup``."""

    source: str
    target: str
    backup: str

    def apply(self) -> None:
        if not storage.exists(self.source):
            return  # done by an earlier attempt
        if storage.exists(self.target):
            if storage.exists(self.backup):
                storage.delete(self.target)  # an earlier attempt already kept the old version
            else:
                storage.move(self.target, self.backup)
        storage.move(self.source, self.target)


def staging_location(root: str, run_id: str) -> str:
    return storage.join(root, STAGING_PREFIX + run_id)


def table_moves(staged_table: str, table: str, backup: str, partitioned: bool) -> list[Move]:
    """The moves that publish a staged table: the whole directory, or, for a
    partitioned table, each leaf partition directory the run wrote (the
    others stay as they are: dynamic partition overwrite)."""
    if not partitioned:
        return [Move(staged_table, table, backup)]
    leaves = sorted({path.rsplit("/", 1)[0] for path in storage.files_under(staged_table) if "/" in path})
    moves = [Move(storage.join(staged_table, leaf), storage.join(table, leaf), storage.join(backup, leaf))
             for leaf in leaves if not leaf.startswith(("_", "."))]
    marker = storage.join(staged_table, "_SUCCESS")
    if storage.exists(marker):
        moves.append(Move(marker, storage.join(table, "_SUCCESS"), storage.join(backup, "_SUCCESS")))
    return moves


def append_moves(staged: str, target: str) -> list[Move]:
    """Moves that add a staged table's data files to an existing table (append)."""
    return [Move(storage.join(staged, name), storage.join(target, name), storage.join(staged, name + ".displaced"))
            for name in storage.files_under(staged) if not name.rsplit("/", 1)[-1].startswith(("_", "."))]


def write_journal(staging: str, run_id: str, moves: list[Move]) -> None:
    storage.write_text(storage.join(staging, JOURNAL), json.dumps({
        "run_id": run_id, "moves": [[m.source, m.target, m.backup] for m in moves],
    }, indent=2))


def publish(staging: str) -> None:
    """Perform the journal's moves (again, if an attempt was interrupted)."""
    journal = json.loads(storage.read_text(storage.join(staging, JOURNAL)))
    for source, target, backup in journal["moves"]:
        Move(source, target, backup).apply()


@dataclass(frozen=True)
class Recovered:
    run_id: str
    outcome: str  # "published" or "rolled back"


def recover(root: str, ledger: LedgerStore, mark_manifest) -> list[Recovered]:
    """Finish or roll back every run on ``root`` that stopped half-way (the
    caller holds the root's lock, so none of them is still running).
    ``mark_manifest(run_id, status, note)`` records the outcome in the run's
    manifest."""
    outcomes = []
    stagings = {e.name[len(STAGING_PREFIX):]: e.location for e in storage.list_dir(root)
                if e.is_dir and e.name.startswith(STAGING_PREFIX)}
    pending = set(ledger.pending_runs())
    for run_id in sorted(set(stagings) | pending):
        staging = stagings.get(run_id)
        if staging is not None and storage.exists(storage.join(staging, JOURNAL)):
            publish(staging)
            if run_id in pending:
                ledger.set_status(run_id, COMMITTED)
            storage.delete(staging)
            mark_manifest(run_id, "succeeded", "interrupted while publishing; the next run finished the publish")
            outcomes.append(Recovered(run_id, "published"))
        else:
            if staging is not None:
                storage.delete(staging)
            if run_id in pending:
                ledger.set_status(run_id, ROLLED_BACK)
            mark_manifest(run_id, "abandoned", "interrupted before publishing; nothing of it went live, "
                                               "its staging was removed and its ledger entry rolled back")
            outcomes.append(Recovered(run_id, "rolled back"))
        log.warning("run %s had stopped half-way: %s", run_id, outcomes[-1].outcome)
    return outcomes

