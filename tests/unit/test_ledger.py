"""Privacy accounting across runs: replays, recomposition, per-row
composition over partition selections, guarantees, and the ledger's files."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from dp_spark.guarantees import Guarantee
from dp_spark.ledger import (
    LedgerEntry,
    RecompositionRefused,
    Release,
    canonical_partition,
    overlaps,
    partition_label,
    plan_run,
)
from dp_spark.ledger_store import LedgerStore

EPS = Guarantee.pure(12.0)


def release(epsilon=12.0, fingerprint="rel-a", guarantee=None, column="text"):
    return Release(column, column, "mlap", epsilon, fingerprint, guarantee or Guarantee.pure(epsilon))


def entries_of(run, selection, releases, seed="seed-a", row_key="id:id", status="committed"):
    return [LedgerEntry.of(r, run_id=run, dataset="reviews", partition=canonical_partition(selection),
                           seed_fingerprint=seed, row_key=row_key, recorded_at="2026-12-01", status=status)
            for r in releases]


def test_partition_labels_and_overlap():
    assert partition_label({}) == "*"
    assert partition_label({"region": "eu", "ds": "1"}) == "ds=1/region=eu"
    assert overlaps({}, {"ds": "1"}) and overlaps({"ds": "1"}, {"ds": "1", "region": "eu"})
    assert not overlaps({"ds": "1"}, {"ds": "2"})
    assert not overlaps({"ds": "1", "region": "eu"}, {"ds": "1", "region": "us"})
    assert canonical_partition({"rating": 5}) == canonical_partition({"rating": int("05")}) == '{"rating":5}'


def test_same_seed_and_release_replays_other_seed_is_refused_then_composes():
    earlier = entries_of("r1", {}, [release()])
    totals = plan_run(earlier, "reviews", {}, [release()], "seed-a", "id:id", allow_recompose=False)
    assert totals["text"].epsilon == 12.0 and totals["text"].earlier == ()
    with pytest.raises(RecompositionRefused, match=r"column 'text': run r1 .* total 24.*--seed-file"):
        plan_run(earlier, "reviews", {}, [release()], "seed-b", "id:id", allow_recompose=False)
    assert plan_run(earlier, "reviews", {}, [release()], "seed-b", "id:id", True)["text"].epsilon == 24.0


def test_another_release_under_the_same_seed_is_not_a_replay():
    """Regression: the replay test compared mechanism and epsilon only, so
    max_distance = 3 under the same seed and epsilon passed as a replay."""
    earlier = entries_of("r1", {}, [release()])
    truncated = release(fingerprint="rel-b", guarantee=Guarantee.approximate(12.0, 1e-3))
    with pytest.raises(RecompositionRefused):
        plan_run(earlier, "reviews", {}, [truncated], "seed-a", "id:id", False)
    total = plan_run(earlier, "reviews", {}, [truncated], "seed-a", "id:id", True)["text"]
    assert (total.epsilon, total.delta) == (24.0, 1e-3)


def test_composition_is_per_row_over_partitions():
    """Two runs on separate partitions at 12 each, then one over everything:
    every row has seen two releases (24), not three (36)."""
    history = entries_of("r1", {"ds": "1"}, [release()], seed="s1") + entries_of("r2", {"ds": "2"}, [release()],
                                                                                  seed="s2")
    total = plan_run(history, "reviews", {}, [release()], "s3", "id:id", True)["text"]
    assert total.epsilon == 24.0
    nested = history + entries_of("r3", {"ds": "1", "region": "eu"}, [release()], seed="s3")
    assert plan_run(nested, "reviews", {}, [release()], "s4", "id:id", True)["text"].epsilon == 36.0
    assert plan_run(nested, "reviews", {"ds": "2"}, [release()], "s4", "id:id", True)["text"].epsilon == 24.0


def test_position_keyed_runs_replay_only_the_same_selection():
    earlier = entries_of("r1", {"ds": "1"}, [release()], row_key="position")
    same = plan_run(earlier, "reviews", {"ds": "1"}, [release()], "seed-a", "position", False)["text"]
    assert same.epsilon == 12.0
    with pytest.raises(RecompositionRefused):
        plan_run(earlier, "reviews", {}, [release()], "seed-a", "position", False)


def test_a_release_without_a_guarantee_leaves_the_total_unbounded():
    unguaranteed = release(guarantee=Guarantee.none("tgumbel"))
    earlier = entries_of("r1", {}, [unguaranteed])
    total = plan_run(earlier, "reviews", {}, [release()], "seed-b", "id:id", True)["text"]
    assert not total.bounded and total.unprotected == 1 and total.epsilon == 12.0
    with pytest.raises(RecompositionRefused, match="unbounded"):
        plan_run(earlier, "reviews", {}, [release()], "seed-b", "id:id", False)


def test_pending_releases_count_and_rolled_back_ones_do_not():
    pending = entries_of("r1", {}, [release()], status="pending")
    with pytest.raises(RecompositionRefused, match="pending"):
        plan_run([LedgerEntry(**{**pending[0].to_dict(), "recorded_at": ""})], "reviews", {}, [release()],
                 "seed-b", "id:id", False)
    rolled_back = entries_of("r1", {}, [release()], status="rolled_back")
    assert plan_run(rolled_back, "reviews", {}, [release()], "seed-b", "id:id", False)["text"].epsilon == 12.0


def test_several_releases_of_one_column_in_a_run_add_up():
    mine = [release(fingerprint="a"), Release("text", "text_tem", "tem", 5.0, "b", Guarantee.pure(5.0))]
    assert plan_run([], "reviews", {}, mine, "seed", "id:id", False)["text"].epsilon == 17.0


def test_store_records_pending_then_commits_or_rolls_back(tmp_path):
    store = LedgerStore(str(tmp_path / "ledger"))
    store.record("r1", entries_of("r1", {}, [release()]))
    assert store.pending_runs() == ["r1"] and store.entries()[0].status == "pending"
    store.set_status("r1", "committed")
    store.record("r2", entries_of("r2", {}, [release()], seed="s2"))
    store.set_status("r2", "rolled_back")
    assert {e.run_id: e.status for e in store.entries()} == {"r1": "committed", "r2": "rolled_back"}
    record = json.loads((tmp_path / "ledger" / "r1.json").read_text())
    assert record["entries"][0]["guarantee"] == "pure" and record["entries"][0]["guarantee_epsilon"] == 12.0


def test_store_reads_a_version_0_1_parquet_ledger_as_unguaranteed(tmp_path):
    legacy = tmp_path / "ledger"
    legacy.mkdir()
    pd.DataFrame([{"run_id": "old", "dataset": "reviews", "partition": "ds=1", "column": "text",
                   "output_column": "text", "mechanism": "mlap", "epsilon": 12.0, "seed_fingerprint": "f",
                   "row_key": "id:id", "recorded_at": "2026-11-22"}]).to_parquet(legacy / "part-0.parquet")
    (entry,) = LedgerStore(str(legacy)).entries()
    assert (entry.selection, entry.guarantee, entry.status) == ({"ds": "1"}, "none", "committed")
