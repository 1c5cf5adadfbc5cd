from __future__ import annotations

import pytest

from dp_spark.ledger import (
    LedgerEntry,
    RecompositionRefused,
    Release,
    check_recomposition,
    partition_label,
    partitions_overlap,
)


def entry(partition="ds=1", column="text", fingerprint="aaa", epsilon=10.0, run="r1", row_key="id:id",
          output="text"):
    return LedgerEntry(run, "reviews", partition, column, output, "mlap", epsilon, fingerprint, row_key, "2026-11-22")


def releases(epsilon, column="text", output="text", mechanism="mlap"):
    return [Release(column, output, mechanism, epsilon)]


def test_partition_labels_and_overlap():
    assert partition_label({}) == "*"
    assert partition_label({"region": "eu", "ds": "1"}) == "ds=1/region=eu"
    assert partitions_overlap("*", "ds=1")
    assert partitions_overlap("ds=1", "ds=1/region=eu")
    assert not partitions_overlap("ds=1", "ds=2")
    assert not partitions_overlap("ds=1/region=eu", "ds=1/region=us")


def test_replay_with_the_same_seed_is_allowed():
    totals = check_recomposition([entry()], "reviews", "ds=1", releases(10.0), "aaa", "id:id", allow=False)
    assert totals == {"text": 10.0}


def test_new_seed_on_released_partition_is_refused_with_totals():
    with pytest.raises(RecompositionRefused, match=r"(?s)column .text.: run r1 .* total 20.*--allow-recompose"):
        check_recomposition([entry()], "reviews", "ds=1", releases(10.0), "bbb", "id:id", allow=False)
    with pytest.raises(RecompositionRefused):
        check_recomposition([entry(partition="*")], "reviews", "ds=1", releases(10.0), "bbb", "id:id", allow=False)


def test_other_partition_column_or_dataset_is_not_composition():
    entries = [entry(partition="ds=2"), entry(column="title")]
    assert check_recomposition(entries, "reviews", "ds=1", releases(5.0), "bbb", "id:id", allow=False) == {"text": 5.0}
    other = LedgerEntry("r", "other", "ds=1", "text", "text", "mlap", 1.0, "zzz", "id:id", "t")
    assert check_recomposition([other], "reviews", "ds=1", releases(5.0), "bbb", "id:id", allow=False) == {"text": 5.0}


def test_allowed_recomposition_adds_up_each_seed_once():
    entries = [entry(), entry(run="r2"), entry(fingerprint="ccc", epsilon=3.0, run="r3")]
    totals = check_recomposition(entries, "reviews", "ds=1", releases(10.0), "bbb", "id:id", allow=True)
    assert totals == {"text": 23.0}


def test_same_seed_keyed_by_position_replays_only_the_same_selection():
    """Position keys depend on which rows a run reads: the same seed over
    another selection draws fresh noise for the rows both runs share."""
    full = entry(partition="*", row_key="position")
    assert check_recomposition([full], "reviews", "*", releases(10.0), "aaa", "position", allow=False)
    with pytest.raises(RecompositionRefused):
        check_recomposition([full], "reviews", "ds=1", releases(10.0), "aaa", "position", allow=False)
    keyed = entry(partition="*")
    assert check_recomposition([keyed], "reviews", "ds=1", releases(10.0), "aaa", "id:id", allow=False)
    with pytest.raises(RecompositionRefused):  # same seed, other keying: other noise
        check_recomposition([keyed], "reviews", "*", releases(10.0), "aaa", "position", allow=False)


def test_several_releases_of_one_column_add_up_and_replay_together():
    """Comparing mechanisms on one column: each release adds its epsilon; the
    same run again (same seed) replays all of them."""
    run = [Release("text", "text_mlap", "mlap", 10.0), Release("text", "text_tem", "tem", 4.0)]
    assert check_recomposition([], "reviews", "ds=1", run, "aaa", "id:id", allow=False) == {"text": 14.0}
    earlier = [entry(output="text_mlap"), LedgerEntry("r1", "reviews", "ds=1", "text", "text_tem", "tem", 4.0,
                                                      "aaa", "id:id", "t")]
    assert check_recomposition(earlier, "reviews", "ds=1", run, "aaa", "id:id", allow=False) == {"text": 14.0}
    with pytest.raises(RecompositionRefused):  # same seed, another mechanism: other noise
        check_recomposition(earlier, "reviews", "ds=1", [Release("text", "text_mlap", "santext", 10.0)],
                            "aaa", "id:id", allow=False)


def test_releases_of_one_seed_at_different_epsilons_each_count():
    """The same seed at another epsilon draws other outputs: a release of its own."""
    entries = [entry(epsilon=10.0), entry(epsilon=5.0, run="r2")]
    totals = check_recomposition(entries, "reviews", "ds=1", releases(1.0), "bbb", "id:id", allow=True)
    assert totals == {"text": 16.0}
