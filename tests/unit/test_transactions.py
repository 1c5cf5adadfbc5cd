"""A run as a transaction, without Spark: the lock that serialises runs on a
root, publishing from staging through a journal, and recovery of a run that
stopped at any point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from dp_spark import storage
from dp_spark.guarantees import Guarantee
from dp_spark.ledger import LedgerEntry, Release, canonical_partition
from dp_spark.ledger_store import LedgerStore
from dp_spark.lock import OutputLocked, RunLock
from dp_spark.publish import JOURNAL, Move, publish, recover, staging_location, table_moves, write_journal


def test_a_second_run_on_a_locked_root_is_refused_naming_the_holder(tmp_path):
    root = str(tmp_path)
    with RunLock(root, "run-a"):
        with pytest.raises(OutputLocked, match=r"locked by run run-a \(host .*, pid \d+"):
            RunLock(root, "run-b").acquire()
        assert [lease.run_id for lease in RunLock(root, "x").leases()] == ["run-a"]
    with RunLock(root, "run-b"):  # released: the next run gets it
        pass
    assert storage.list_dir(storage.join(root, "_lock")) == []


def test_of_two_contenders_exactly_one_holds_the_lock(tmp_path):
    """Two processes write their leases within the same instant: the earlier
    (then the smaller run id) holds, the other steps back."""
    script = (
        "import sys, time\n"
        "from dp_spark.lock import RunLock, OutputLocked\n"
        "lock = RunLock(sys.argv[1], sys.argv[2], settle_seconds=0.5)\n"
        "try:\n"
        "    lock.acquire()\n"
        "except OutputLocked:\n"
        "    print('refused'); sys.exit(0)\n"
        "print('held'); sys.stdout.flush(); time.sleep(2); lock.release()\n"
    )
    contenders = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), f"run-{i}"],
                                   stdout=subprocess.PIPE, text=True) for i in range(2)]
    outcomes = sorted(p.communicate(timeout=60)[0].strip() for p in contenders)
    assert outcomes == ["held", "refused"]


def test_a_stale_lease_is_reported_unless_its_process_is_gone_or_breaking_is_asked(tmp_path):
    root = str(tmp_path)
    holder = RunLock(root, "run-old", ttl_seconds=0.2)
    storage.write_text(holder._file("run-old", ".lease"), json.dumps(
        {"run_id": "run-old", "host": "another-host", "pid": 1, "started_at": "2026-12-01T00:00:00+00:00"}))
    time.sleep(0.5)
    with pytest.raises(OutputLocked, match="has not been renewed.*--break-stale-lock"):
        RunLock(root, "run-new", ttl_seconds=0.2).acquire()
    with RunLock(root, "run-new", ttl_seconds=0.2, break_stale=True):
        pass
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    storage.write_text(holder._file("run-dead", ".lease"), json.dumps(
        {"run_id": "run-dead", "host": os.uname().nodename, "pid": dead.pid, "started_at": "now"}))
    with RunLock(root, "run-next"):  # same host, process gone: broken with a warning
        pass


def staged_run(root, run_id, store, partitioned=True):
    """A run that wrote its pending entry and staged a table replacing partition ds=1."""
    release = Release("text", "text", "mlap", 12.0, "rel", Guarantee.pure(12.0))
    store.record(run_id, [LedgerEntry.of(release, run_id=run_id, dataset="d", partition=canonical_partition({}),
                                         seed_fingerprint="s", row_key="id:id", recorded_at="now")])
    staging = staging_location(root, run_id)
    staged = storage.join(staging, "table")
    storage.write_text(storage.join(staged, "ds=1", "part-new.parquet"), "new")
    moves = table_moves(staged, storage.join(root, "table"), storage.join(staging, "previous", "table"), partitioned)
    return staging, moves


@pytest.mark.parametrize("stopped_after_moves", [0, 1])
def test_a_run_stopped_while_publishing_is_finished_by_the_next_one(tmp_path, stopped_after_moves):
    root = str(tmp_path)
    storage.write_text(storage.join(root, "table", "ds=1", "part-old.parquet"), "old")
    storage.write_text(storage.join(root, "table", "ds=2", "part-old.parquet"), "other")
    store = LedgerStore(storage.join(root, "ledger"))
    staging, moves = staged_run(root, "r1", store)
    write_journal(staging, "r1", moves)
    for move in moves[:stopped_after_moves]:
        move.apply()
    notes = {}
    outcome = recover(root, store, lambda run, status, note: notes.update({run: status}))
    assert [(o.run_id, o.outcome) for o in outcome] == [("r1", "published")] and notes == {"r1": "succeeded"}
    assert (tmp_path / "table" / "ds=1" / "part-new.parquet").read_text() == "new"
    assert not (tmp_path / "table" / "ds=1" / "part-old.parquet").exists()
    assert (tmp_path / "table" / "ds=2" / "part-old.parquet").read_text() == "other"
    assert store.runs()["r1"]["status"] == "committed" and not storage.exists(staging)


def test_a_crash_between_the_two_renames_of_a_swap_is_finished(tmp_path):
    """Regression: the old table had been moved aside, the new one not yet in
    place, and no run restored anything: no table/ at all."""
    root = str(tmp_path)
    storage.write_text(storage.join(root, "table", "part-old.parquet"), "old")
    store = LedgerStore(storage.join(root, "ledger"))
    staging, moves = staged_run(root, "r1", store, partitioned=False)
    write_journal(staging, "r1", moves)
    (move,) = moves
    storage.move(move.target, move.backup)  # the first rename, then the crash
    assert not (tmp_path / "table").exists()
    recover(root, store, lambda *args: None)
    assert (tmp_path / "table" / "ds=1" / "part-new.parquet").read_text() == "new"


def test_a_run_stopped_before_publishing_is_rolled_back(tmp_path):
    root = str(tmp_path)
    store = LedgerStore(storage.join(root, "ledger"))
    staging, _ = staged_run(root, "r1", store)
    statuses = {}
    recover(root, store, lambda run, status, note: statuses.update({run: status}))
    assert statuses == {"r1": "abandoned"} and store.runs()["r1"]["status"] == "rolled_back"
    assert not storage.exists(staging) and not (tmp_path / "table").exists()


def test_moves_are_idempotent(tmp_path):
    root = str(tmp_path)
    storage.write_text(storage.join(root, "new"), "new")
    storage.write_text(storage.join(root, "target"), "old")
    move = Move(storage.join(root, "new"), storage.join(root, "target"), storage.join(root, "backup"))
    move.apply()
    move.apply()
    assert (tmp_path / "target").read_text() == "new" and (tmp_path / "backup").read_text() == "old"
    staging = storage.join(root, "_staging-x")
    write_journal(staging, "x", [move])
    publish(staging)
    assert json.loads((tmp_path / "_staging-x" / JOURNAL).read_text())["run_id"] == "x"
