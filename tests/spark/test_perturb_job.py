"""The perturb job end to end (classic local[2]; the tests marked e2e also
under Spark Connect)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from chispa import assert_df_equality

from dp_spark.embeddings import Embeddings, only_words
from dp_spark.errors import ConfigError, InputError, PrivacyRefusal
from dp_spark.ledger import RecompositionRefused
from dp_spark.ledger_store import LedgerStore
from dp_spark.spark.perturb import Seed, run
from tests.spark.conftest import VOCAB_SIZE

# The tokenizer's words: letters and digits, apostrophes inside, and clitics
# ("'s", "n't"), which are vocabulary words and so can also be substitutes.
WORD = re.compile(r"['’]?[^\W_]+(?:['’][^\W_]+)*")
PLACEHOLDER = re.compile(r"<(?:unk|num|email|url|phone)>")


def words_of(text):
    """The words of a text, a placeholder counting as one."""
    return WORD.findall(PLACEHOLDER.sub("x", text or ""))


def separators_of(text):
    return WORD.sub("", PLACEHOLDER.sub("x", text))
SEED = Seed(b"test-seed-do-not-leak-3141592653", "given")
TEXTS = [
    "The movie was terrible, said Maria in Paris.",
    None,
    "",
    "Café in Zürich: the naïve barista said «très bien».",
    "I would call about the order in Berlin!",
    " ".join(["the good movie"] * 700),  # a very long row: 2,100 words
]


def reviews(n=240):
    rows = []
    for i in range(n):
        text = TEXTS[i % len(TEXTS)]
        tokens = None if i % 17 == 5 else ([] if i % 13 == 4 else (text or "a b").lower().split()[:8])
        rows.append({"id": i, "ds": f"2026-11-{20 + i % 3}", "text": text, "tokens": tokens})
    return pd.DataFrame(rows)


@pytest.fixture
def input_path(spark, tmp_path):
    path = tmp_path / "input"
    reviews().to_parquet(path.with_suffix(".parquet"))
    spark.read.parquet(str(path.with_suffix(".parquet"))).repartition(3).write.parquet(str(path))
    return path


COLUMNS = [
    {"name": "text", "mechanism": "mlap", "epsilon": 8.0, "output": "add"},
    {"name": "tokens", "mechanism": "tem", "epsilon": 10.0},
]


def read(spark, path, order="id"):
    return spark.read.parquet(str(path)).orderBy(order)


@pytest.mark.e2e
def test_end_to_end_string_and_array_columns(spark, make_config, input_path):
    config = make_config(input_path, COLUMNS, job={"id_column": "id"})
    result = run(spark, config, seed=SEED)
    out = read(spark, result.locations["table"]).toPandas()
    source = reviews()
    assert len(out) == len(source)
    assert list(out.columns[:4]) == ["id", "ds", "text", "tokens"] and "text_dp" in out.columns
    out = out.set_index("id").loc[source["id"]]
    assert out["text"].tolist() == source["text"].tolist()  # "add" keeps the input column
    for original, perturbed in zip(source["text"], out["text_dp"]):
        if original is None:
            assert perturbed is None
        else:
            assert separators_of(original) == separators_of(perturbed)
            assert len(words_of(original)) == len(words_of(perturbed))
    for original, perturbed in zip(source["tokens"], out["tokens"]):
        assert (original is None) == (perturbed is None)
        if original is not None:
            assert len(original) == len(perturbed)
    assert (out["text_dp"] != out["text"]).any()
    manifest = json.loads(Path(result.locations["manifest"]).read_text())
    assert manifest["status"] == "succeeded" and manifest["rows"] == len(source)
    assert manifest["seed_source"] == "given" and len(manifest["seed_fingerprint"]) == 32
    assert not [p for p in Path(config.output.root).iterdir() if p.name.startswith("_staging")]


@pytest.mark.e2e
def test_seed_appears_nowhere_in_outputs_or_logs(spark, make_config, input_path, caplog):
    caplog.set_level("DEBUG")
    result = run(spark, make_config(input_path, COLUMNS), seed=SEED)
    root = Path(result.locations["table"]).parent
    for path in root.rglob("*"):
        if path.is_file():
            assert SEED.value not in path.read_bytes(), path
    assert SEED.value.decode() not in caplog.text


def test_statistics_agree_with_independent_counts(spark, make_config, input_path, embeddings_files):
    config = make_config(input_path, COLUMNS[:1], job={"min_count": 3})
    result = run(spark, config, seed=SEED)
    out = read(spark, result.locations["table"]).toPandas().set_index("id")
    source = reviews().set_index("id").loc[out.index]
    vectors, words = embeddings_files
    vocabulary = set(only_words(Embeddings.from_npy(vectors, words)).words.tolist())
    tokens = perturbed = changed = 0
    pairs = Counter()
    for original, output in zip(source["text"], out["text_dp"]):
        before, after = words_of(original), words_of(output)
        assert len(before) == len(after)
        for a, b in zip(before, after):
            tokens += 1
            if a.lower() in vocabulary:
                perturbed += 1
                if a.lower() != b.lower():
                    changed += 1
                    pairs[(a.lower(), b.lower())] += 1
    privacy = pd.read_parquet(result.locations["privacy_stats"])
    row = privacy[privacy["column"] == "text"].iloc[0]
    assert (row["tokens"], row["tokens_perturbed"], row["tokens_changed"]) == (tokens, perturbed, changed)
    assert row["tokens_oov"] == tokens - perturbed
    assert row["rows"] == source["text"].notna().sum() and row["null_rows"] == source["text"].isna().sum()
    assert row["substitution_rate"] == pytest.approx(changed / perturbed)
    counts = pd.read_parquet(result.locations["substitution_stats"])
    reported = {(r.original, r.substitute): r.count for r in counts.itertuples()}
    assert reported == {pair: n for pair, n in pairs.items() if n >= 3}
    assert row["pairs_suppressed"] == sum(1 for n in pairs.values() if n < 3)
    assert row["row_epsilon_max"] == pytest.approx(8.0 * 2100)
    assert (row["guarantee"], row["guarantee_epsilon"], row["epsilon_total_per_token"]) == ("pure", 8.0, 8.0)
    # plausible deniability of the mechanism over the vocabulary and over the text's words
    assert 0 <= row["nw_p5"] <= row["nw_p50"] <= row["nw_p95"] <= 1 and row["sw_p50"] >= 1
    assert 0 <= row["nw_text_mean"] <= 1 and 0 < row["text_tokens_covered"] <= 1
    assert row["deniability_source"] == "200 vocabulary words x 100 draws"


def test_small_counts_are_suppressed(spark, make_config, input_path):
    result = run(spark, make_config(input_path, COLUMNS[:1], job={"min_count": 10**9}), seed=SEED)
    assert not Path(result.locations["substitution_stats"]).exists()
    assert not Path(result.locations["substitution_rates"]).exists()
    row = pd.read_parquet(result.locations["privacy_stats"]).iloc[0]
    assert row["pairs_reported"] == 0 and row["pairs_suppressed"] > 0


@pytest.mark.e2e
def test_same_seed_same_output_other_seed_other_output(spark, make_config, input_path, tmp_path):
    first = run(spark, make_config(input_path, COLUMNS, root=tmp_path / "a"), seed=SEED)
    again = run(spark, make_config(input_path, COLUMNS, root=tmp_path / "b"), seed=SEED)
    other = run(spark, make_config(input_path, COLUMNS, root=tmp_path / "c"), seed=Seed(b"another seed", "given"))
    table = lambda r: read(spark, r.locations["table"])  # noqa: E731
    assert_df_equality(table(first), table(again))
    assert table(first).exceptAll(table(other)).count() > 0


@pytest.mark.e2e
def test_id_keys_make_output_independent_of_partitioning(spark, make_config, tmp_path, input_path):
    frame = spark.read.parquet(str(input_path))
    frame.coalesce(1).write.parquet(str(tmp_path / "one"))
    frame.repartition(4).write.parquet(str(tmp_path / "four"))
    outputs = [
        run(spark, make_config(tmp_path / name, COLUMNS, root=tmp_path / f"out-{name}", job={"id_column": "id"}),
            seed=SEED)
        for name in ("one", "four")
    ]
    assert_df_equality(*(read(spark, r.locations["table"]) for r in outputs))


@pytest.mark.e2e
def test_partition_overwrite_touches_only_its_partition(spark, make_config, input_path):
    config = make_config(input_path, COLUMNS, output={"partition_by": ["ds"]}, job={"id_column": "id"})
    first = run(spark, config, seed=SEED)
    table = Path(first.locations["table"])
    before = {p: sorted(f.name for f in p.iterdir()) for p in table.iterdir() if p.is_dir()}
    assert len(before) == 3
    replay = run(spark, config, partitions={"ds": "2026-11-21"}, seed=SEED)
    after = {p: sorted(f.name for f in p.iterdir()) for p in table.iterdir() if p.is_dir()}
    for partition, files in before.items():
        if partition.name == "ds=2026-11-21":
            assert after[partition] != files  # rewritten
        else:
            assert after[partition] == files  # untouched
    assert len(read(spark, table).toPandas()) == len(reviews())
    entries = LedgerStore(replay.locations["ledger"]).entries()
    assert {e.partition for e in entries} == {"{}", '{"ds":"2026-11-21"}'}
    assert replay.totals["text"].epsilon == 8.0  # a replay adds nothing


def test_new_seed_on_released_data_is_refused(spark, make_config, input_path):
    config = make_config(input_path, COLUMNS[:1])
    run(spark, config, seed=SEED)
    with pytest.raises(RecompositionRefused, match="column 'text'.*total 16"):
        run(spark, config, seed=Seed(b"fresh", "given"))
    recomposed = run(spark, config, seed=Seed(b"fresh", "given"), allow_recompose=True)
    row = pd.read_parquet(recomposed.locations["privacy_stats"]).query(f"run_id == '{recomposed.run_id}'").iloc[0]
    assert row["epsilon_total_per_token"] == 16.0
    assert len([e for e in LedgerStore(recomposed.locations["ledger"]).entries() if e.status == "committed"]) == 2


def test_another_release_under_the_same_seed_draws_fresh_noise_and_composes(spark, make_config, input_path):
    """Regression: the noise key ignored the mechanism's parameters, so a
    release with another max_distance under one seed shared its noise with
    the first and was accepted as a replay (total still 8)."""
    first = run(spark, make_config(input_path, COLUMNS[:1], job={"id_column": "id"}), seed=SEED)
    truncated = [{**COLUMNS[0], "params": {"max_distance": 4.0}}]
    config = make_config(input_path, truncated, job={"id_column": "id"})
    with pytest.raises(RecompositionRefused, match="total 16"):
        run(spark, config, seed=SEED)
    second = run(spark, config, seed=SEED, allow_recompose=True)
    assert second.totals["text"].epsilon == 16.0 and second.totals["text"].delta > 0
    again = run(spark, config, seed=SEED)  # the identical release is a replay
    assert again.totals["text"].epsilon == 16.0
    tables = [read(spark, r.locations["table"]).toPandas() for r in (first, second)]
    assert (tables[0]["text_dp"] != tables[1]["text_dp"]).sum() > 0


@pytest.mark.e2e
def test_duplicate_row_keys_are_refused_before_anything_is_published(spark, make_config, tmp_path):
    """Regression: rows sharing an id shared their noise."""
    frame = reviews()
    frame.loc[frame.index[:3], "id"] = 7
    frame.to_parquet(tmp_path / "dups.parquet")
    config = make_config(tmp_path / "dups.parquet", COLUMNS[:1], job={"id_column": "id"})
    with pytest.raises(InputError, match=r"id column 'id' is not unique: 1 value\(s\) repeat, over 4 rows"):
        run(spark, config, seed=SEED)
    root = Path(config.output.root)
    assert not (root / "table").exists() and not (root / "privacy_stats").exists()
    assert not [p for p in root.iterdir() if p.name.startswith("_staging")]
    (record,) = LedgerStore(str(root / "ledger")).runs().values()
    assert record["status"] == "rolled_back"


def test_a_mechanism_without_a_guarantee_runs_only_when_the_column_accepts_it(spark, make_config, input_path):
    columns = [{"name": "tokens", "mechanism": "tgumbel", "epsilon": 2000.0}]
    with pytest.raises(PrivacyRefusal, match="promises no privacy guarantee.*accept_no_guarantee = true"):
        run(spark, make_config(input_path, columns), seed=SEED)
    accepted = run(spark, make_config(input_path, [{**columns[0], "accept_no_guarantee": True}]), seed=SEED)
    row = pd.read_parquet(accepted.locations["privacy_stats"]).iloc[0]
    assert row["guarantee"] == "none" and pd.isna(row["guarantee_epsilon"])
    assert pd.isna(row["epsilon_total_per_token"]) and row["releases_without_guarantee"] == 1
    (entry,) = LedgerStore(accepted.locations["ledger"]).entries()
    assert entry.guarantee == "none" and entry.guarantee_epsilon is None


@pytest.mark.parametrize(
    "columns, error",
    [
        ([{"name": "missing", "mechanism": "mlap", "epsilon": 8.0}], r"input has no column 'missing'"),
        ([{"name": "id", "mechanism": "mlap", "epsilon": 8.0}], r"column 'id' has type bigint"),
        ([{"name": "tokens", "mechanism": "mlap", "epsilon": 8.0, "kind": "string"}], r"configured as kind 'string'"),
        ([{"name": "text", "mechanism": "tgumbel", "epsilon": 10.0, "accept_no_guarantee": True}], r"epsilon_min"),
    ],
)
def test_bad_input_fails_before_anything_is_written(spark, make_config, input_path, columns, error):
    config = make_config(input_path, columns)
    with pytest.raises((InputError, ConfigError), match=error):
        run(spark, config, seed=SEED)
    root = Path(config.output.root)
    assert not (root / "table").exists() and not (root / "ledger").exists() and not (root / "manifests").exists()


@pytest.mark.e2e
@pytest.mark.parametrize("partitioned", [True, False])
def test_failed_run_leaves_the_table_as_it_was(spark, make_config, tmp_path, partitioned):
    """A task fails mid-write (a null id in the last rows); the table written
    by the previous run is untouched, nothing partial is visible, and the
    failed run's ledger entry is rolled back."""
    good = reviews()
    good.to_parquet(tmp_path / "good.parquet")
    bad = good.copy()
    bad["id"] = bad["id"].astype("Int64")
    bad.loc[len(bad) - 1, "id"] = None
    bad.to_parquet(tmp_path / "bad.parquet")
    config = make_config(tmp_path / "good.parquet", COLUMNS, job={"id_column": "id"},
                         output={"partition_by": ["ds"] if partitioned else []})
    first = run(spark, config, seed=SEED)
    table = Path(first.locations["table"])
    snapshot = {p.relative_to(table): p.read_bytes() for p in table.rglob("*") if p.is_file()}
    with pytest.raises(InputError, match="null value"):
        run(spark, config.with_overrides(input_path=str(tmp_path / "bad.parquet")), seed=SEED)
    assert {p.relative_to(table): p.read_bytes() for p in table.rglob("*") if p.is_file()} == snapshot
    assert [p for p in Path(config.output.root).rglob("*") if "staging" in p.name] == []
    statuses = sorted(e.status for e in LedgerStore(first.locations["ledger"]).entries())
    assert statuses == ["committed", "committed", "rolled_back", "rolled_back"]


def test_explain_validates_and_writes_nothing(spark, make_config, input_path):
    config = make_config(input_path, COLUMNS, job={"id_column": "id"})
    plan = run(spark, config, seed=SEED, explain=True)
    assert plan.status == "explained" and not Path(config.output.root).exists()
    assert [c["guarantee"] for c in plan.manifest["columns"]] == ["8-d_X, d = euclidean distance",
                                                                  "10-d_X, d = euclidean distance"]


def test_vocabulary_size_fixture_is_small(embeddings_files):
    vectors, _ = embeddings_files
    assert Embeddings.from_npy(vectors, embeddings_files[1]).size == VOCAB_SIZE


def test_noise_keys_never_travel_inside_the_serialized_pass(spark, make_config, input_path, monkeypatch):
    """Regression: with py4j logging at DEBUG the pickled UDF is logged in
    base64, and a seed-derived column key sat inside it. Keys now reach the
    executors in a shipped file; the closure holds only their labels."""
    from pyspark import cloudpickle

    from dp_spark.spark import perturber as module

    keys, functions = [], []
    derive = module.release_key
    monkeypatch.setattr(module, "release_key", lambda *args: keys.append(derive(*args)) or keys[-1])
    frame_class = type(spark.range(1))
    map_in_arrow = frame_class.mapInArrow
    monkeypatch.setattr(frame_class, "mapInArrow",
                        lambda self, function, schema, *rest: functions.append(function)
                        or map_in_arrow(self, function, schema, *rest))
    run(spark, make_config(input_path, COLUMNS, job={"id_column": "id"}), seed=SEED)
    (function,) = functions
    pickled = cloudpickle.dumps(function)
    assert len(keys) == 2
    for key in keys:
        for form in (key.to_bytes(8, "little"), key.to_bytes(8, "big"), key.to_bytes(9, "little", signed=True),
                     str(key).encode(), f"{key:x}".encode()):
            assert form not in pickled


def test_a_catalog_table_output_is_written_and_replaced_by_partition(spark, make_config, input_path, tmp_path):
    """output.table: the perturbed table goes to the catalog (saveAsTable,
    then insertInto with dynamic partition overwrite), the statistics and the
    ledger under output.root."""
    spark.sql("DROP TABLE IF EXISTS default.reviews_dp")
    config = make_config(input_path, COLUMNS[:1], job={"id_column": "id"},
                         output={"table": "default.reviews_dp", "partition_by": ["ds"],
                                 "options": {"path": str(tmp_path / "catalog-table")}})
    first = run(spark, config, seed=SEED)
    assert first.locations["table"] == "default.reviews_dp"
    assert spark.table("default.reviews_dp").count() == len(reviews())
    run(spark, config, partitions={"ds": "2026-11-21"}, seed=SEED)  # a replay of one partition
    assert spark.table("default.reviews_dp").count() == len(reviews())
    assert pd.read_parquet(first.locations["privacy_stats"])["run_id"].nunique() == 2
    spark.sql("DROP TABLE default.reviews_dp")


def test_partition_values_are_compared_by_type(spark, make_config, input_path):
    """Regression: id=5 and id=05 select the same rows but were booked as two datasets."""
    config = make_config(input_path, COLUMNS[:1])
    run(spark, config, partitions={"id": "5"}, seed=SEED)
    with pytest.raises(RecompositionRefused, match="partition id=5"):
        run(spark, config, partitions={"id": "05"}, seed=Seed(b"fresh", "given"))
    assert run(spark, config, partitions={"id": "6"}, seed=Seed(b"fresh", "given")).totals["text"].epsilon == 8.0


@pytest.mark.e2e
def test_identifiers_and_unknown_words_never_leave_verbatim_by_default(spark, make_config, tmp_path):
    text = ("Mail jane.doe@example.com or call +1 555-0199 about order 123456, "
            "see https://example.com/x; Zxqvbrtnik says José’s ﬁne")
    pd.DataFrame({"id": [1], "text": [text]}).to_parquet(tmp_path / "pii.parquet")
    config = make_config(tmp_path / "pii.parquet", [{"name": "text", "mechanism": "tem", "epsilon": 50.0}])
    result = run(spark, config, seed=SEED)
    (out,) = pd.read_parquet(result.locations["table"])["text"]
    for secret in ("jane.doe", "example.com", "555", "0199", "123456", "Zxqvbrtnik"):
        assert secret not in out, out
    for placeholder in ("<email>", "<phone>", "<num>", "<url>", "<unk>"):
        assert placeholder in out, out
    row = pd.read_parquet(result.locations["privacy_stats"]).iloc[0]
    assert row["tokens_unprotected"] == 0 and row["entities_email"] == 1 and row["entities_url"] == 1
