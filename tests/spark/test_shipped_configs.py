"""The README's run command and the shipped configs, on the real data."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from dp_spark.cli import main
from dp_spark.ledger_store import LedgerStore

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def from_repository_root(monkeypatch):
    monkeypatch.chdir(REPO)


def test_sms_spam_runs_from_its_config(tmp_path, capsys):
    assert main(["perturb", "--config", "conf/sms_spam.toml", "--output", str(tmp_path), "--master", "local[2]"]) == 0
    printed = capsys.readouterr().out
    assert "succeeded: 5574 rows" in printed and str(tmp_path / "manifests") in printed
    table = pd.read_parquet(tmp_path / "table")
    source = pd.read_csv(REPO.parent / "shared/data/sms_spam/SMSSpamCollection.tsv", sep="\t",
                         header=None, names=["label", "text"], quoting=3, dtype=str, keep_default_na=False)
    assert len(table) == len(source) == 5574
    assert table["label"].value_counts().to_dict() == source["label"].value_counts().to_dict()
    assert (table["text"].values != source["text"].values).mean() > 0.5


def test_quickstart_config_runs_and_prints_locations(tmp_path, capsys):
    assert main(["perturb", "--config", "conf/local.toml", "--output", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for name in ("table", "privacy_stats", "substitution_stats", "ledger", "manifest"):
        assert name in printed
    manifest = json.loads(next((tmp_path / "manifests").glob("*.json")).read_text())
    assert manifest["status"] == "succeeded" and manifest["rows"] == 300
    assert manifest["seed_source"] == "random"
    assert sorted(p.name for p in (tmp_path / "table").iterdir() if p.is_dir()) == [
        "ds=2026-11-20", "ds=2026-11-21", "ds=2026-11-22",
    ]
    # A second run draws a fresh seed: refused, with a message and exit status 3.
    assert main(["perturb", "--config", "conf/local.toml", "--output", str(tmp_path)]) == 3
    assert "--allow-recompose" in capsys.readouterr().err


def test_config_errors_exit_2_without_starting_spark(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[input]\npath = "x"\n[output]\nroot = "y"\n[[columns]]\nname = "t"\nmechanism = "lap"\nepsilon = 1\n')
    assert main(["perturb", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "columns[0].mechanism must be one of custext, diffractor, kde, mahalanobis, mlap, santext, tem, tgumbel, vickrey; got 'lap'" in err
    assert "Traceback" not in err


def test_every_mechanism_runs_from_a_config_on_the_sample_data(tmp_path, capsys):
    """conf/mechanisms.toml: one text column into twelve outputs, one per
    mechanism and variant; each books the guarantee it has, and with three
    releases that promise none, the column's total is unbounded."""
    assert main(["perturb", "--config", "conf/mechanisms.toml", "--output", str(tmp_path), "--seed", "1"]) == 0
    table = pd.read_parquet(tmp_path / "table")
    outputs = [c for c in table.columns if c.startswith("text_")]
    assert len(outputs) == 12 and table["text"].notna().sum() == 299
    privacy = pd.read_parquet(tmp_path / "privacy_stats")
    assert set(privacy["mechanism"]) == {
        "mlap", "tgumbel", "kde", "mahalanobis", "vickrey", "tem", "santext", "custext", "diffractor"}
    assert (privacy["tokens_perturbed"] == privacy["tokens_perturbed"].iloc[0]).all()
    booked = privacy.set_index("output_column")["guarantee"].to_dict()
    assert {k for k, v in booked.items() if v == "none"} == {"text_tgumbel", "text_tgumbel_distance", "text_kde_mh"}
    assert booked["text_mlap_truncated"] == "approximate" and booked["text_custext"] == "within_sets"
    assert privacy["epsilon_total_per_token"].isna().all() and (privacy["releases_without_guarantee"] == 3).all()
    for output in outputs:  # every mechanism changed something, and kept the text's shape
        changed = (table[output] != table["text"]) & table["text"].notna()
        assert changed.any(), output
    ledger = LedgerStore(str(tmp_path / "ledger")).entries()
    assert sorted(e.output_column for e in ledger) == sorted(outputs)
