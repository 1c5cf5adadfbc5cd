"""The privacy auditor on a small synthetic vocabulary: every booked
guarantee survives its audit, deliberately broken mechanisms are caught by
each method, and the exact losses are the ones a brute-force computation
gives."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from dp_spark.audit import (
    AuditSettings,
    audit,
    audit_pairs,
    exact_log_laws,
    nearest_pairs,
    summarize,
    write_outputs,
)
from dp_spark.cli import main
from dp_spark.mechanisms import build_mechanism
from dp_spark.mechanisms.exponential import exponential_distribution
from dp_spark.mechanisms.mlap import MultivariateLaplace
from dp_spark.mechanisms.noise import laplace_radii, uniform_directions
from dp_spark.mechanisms.tem import TruncatedExponential
from dp_spark.mechanisms.tgumbel import minimum_epsilon
from dp_spark.randomness import as_token_random
from tests.conftest import clustered_embeddings

SETTINGS = AuditSettings(words=10, neighbours_per_word=3, draws=6_000, seed=5)
# tgumbel's laws take quadrature: fewer of them.
SETTINGS_BY_NAME = {"tgumbel": AuditSettings(words=4, neighbours_per_word=2, seed=5)}


@pytest.fixture(scope="module")
def embeddings():
    return clustered_embeddings(80, 3, seed=11)


def tgumbel_epsilon(embeddings):
    distances = np.linalg.norm(embeddings.vectors[:, None] - embeddings.vectors[None], axis=2)
    np.fill_diagonal(distances, np.inf)
    return 2 * minimum_epsilon(embeddings.size, float(distances.min()))


CASES = [
    ("tem", 3.0, {}), ("santext", 3.0, {}), ("kde", 3.0, {}), ("custext", 3.0, {}),
    ("mlap", 3.0, {}), ("mlap", 3.0, {"max_distance": 2.0}), ("mahalanobis", 3.0, {}), ("vickrey", 3.0, {}),
    ("diffractor", 1.0, {}), ("diffractor", 1.0, {"method": "tem", "lists": 3}),
    # Guarantee none: audited and reported, never refuted.
    ("santext", 3.0, {"sensitive_fraction": 0.5}), ("custext", 3.0, {"strategy": "aggressive"}),
    ("kde", 3.0, {"sampler": "mh"}), ("tgumbel", None, {}),
]


@pytest.mark.parametrize("name, epsilon, params", CASES, ids=[f"{n}-{p}" for n, _, p in CASES])
def test_no_booked_guarantee_is_refuted(embeddings, name, epsilon, params):
    mechanism = build_mechanism(name, embeddings, epsilon or tgumbel_epsilon(embeddings), **params)
    result = audit(mechanism, SETTINGS_BY_NAME.get(name, SETTINGS))
    assert not result.refuted, result
    assert result.pairs == len(result.table) > 0 and result.counted_pairs > 0
    assert result.method == ("sampled" if name in ("mlap", "mahalanobis", "vickrey") or params.get("sampler") == "mh"
                             else "exact")
    if result.guarantee.holds:
        # Not vacuous: the measured loss is a sizeable part of the claim.
        assert 0.2 * result.guarantee.epsilon < result.loss <= result.guarantee.epsilon * (1 + 1e-6)
    else:
        assert result.loss > 0
    if params.get("sampler") == "mh":
        assert len(result.total_variations) == SETTINGS.tv_words
        assert all(0 <= tv <= 1 for tv in result.total_variations.values())


class DoubledTem(TruncatedExponential):
    """Scores -epsilon d instead of -epsilon d / 2: 2 epsilon-d_X, booked as epsilon."""

    def distance_score(self, distances):
        return -self.epsilon * np.minimum(distances, self.gamma)


class LoudLaplace(MultivariateLaplace):
    """Noise radius drawn for 2 epsilon while booking epsilon."""

    def noisy_vectors(self, ids, rng):
        rng = as_token_random(rng, len(ids))
        noise = uniform_directions(rng, self.DIRECTION_STREAM, self.embeddings.dim)
        radii = laplace_radii(rng, self.RADIUS_STREAM, self.embeddings.dim, 2 * self.epsilon)
        return noise * radii.astype(np.float32)[:, None] + self.embeddings.vectors[ids]


def test_exact_method_refutes_a_doubled_exponent(embeddings):
    result = audit(DoubledTem(embeddings, 3.0), SETTINGS)
    assert result.method == "exact" and result.guarantee.epsilon == 3.0
    assert result.refuted and result.loss > 3.0


def test_sampled_method_refutes_halved_noise(embeddings):
    result = audit(LoudLaplace(embeddings, 3.0), SETTINGS)
    assert result.method == "sampled" and result.guarantee.epsilon == 3.0
    assert result.refuted and result.loss > 3.0
    worst = result.table.loc[result.table["loss"].idxmax()]
    assert worst["p_low"] > worst["q_high"] > 0


def test_exact_loss_is_the_brute_force_one(embeddings):
    """Each pair's loss is max_y |ln P[y | x] - ln P[y | x']| / d from the
    closed-form laws, and the verdict takes the largest."""
    mechanism = build_mechanism("kde", embeddings, 2.0)
    result = audit(mechanism, SETTINGS)
    vectors = embeddings.vectors.astype(np.float64)
    for row in result.table.itertuples():
        p = exponential_distribution(mechanism, row.word_id)
        q = exponential_distribution(mechanism, row.partner_id)
        distance = np.linalg.norm(vectors[row.word_id] - vectors[row.partner_id])
        assert row.distance == pytest.approx(distance, rel=1e-12)
        assert row.loss == pytest.approx(np.abs(np.log(p) - np.log(q)).max() / distance, rel=1e-9)
    assert result.loss == result.table["loss"].max()
    assert result.worst_pair == tuple(result.table.loc[result.table["loss"].idxmax(), ["word", "partner"]])


def test_diffractor_law_in_log_space(embeddings):
    """The log-space law is the mechanism's own distribution, and stays finite
    where that one underflows (a geometric tail e^(-epsilon |j' - j|) far out)."""
    for params in ({"epsilon": 1.0, "lists": 2}, {"epsilon": 1.0, "method": "tem"}, {"epsilon": 20.0}):
        mechanism = build_mechanism("diffractor", embeddings, **params)
        log_laws = exact_log_laws(mechanism, np.arange(embeddings.size))
        laws = np.stack([mechanism.distribution(w) for w in range(embeddings.size)])
        assert np.isfinite(log_laws).all()
        represented = laws > 1e-300
        np.testing.assert_allclose(np.exp(log_laws[represented]), laws[represented], rtol=1e-9)
    assert not represented.all()  # at epsilon 20 the far tail underflowed
    # One geometric list reaches its bound exactly (at the list's ends), within rounding.
    result = audit(mechanism, SETTINGS)
    assert not result.refuted and result.loss == pytest.approx(20.0, rel=1e-9)


def test_tgumbel_loss_is_infinite_where_an_output_is_impossible(embeddings):
    """A word far beyond x's reach (rank past the Poisson table's end) is
    impossible from x and likely from itself: no epsilon bounds that pair."""
    mechanism = build_mechanism("tgumbel", embeddings, tgumbel_epsilon(embeddings))
    vectors = embeddings.vectors.astype(np.float64)
    word = 0
    far = int(np.argmax(np.linalg.norm(vectors - vectors[word], axis=1)))
    word_law, far_law = exact_log_laws(mechanism, np.array([word, far]))
    assert word_law[far] == -np.inf and far_law[far] > math.log(0.01)
    table = audit_pairs(mechanism, [(word, far)], SETTINGS)
    assert table.loc[0, "loss"] == math.inf and table.loc[0, "counted"]
    assert np.isneginf(table.loc[0, "log_p_word"]) or np.isneginf(table.loc[0, "log_p_partner"])


def test_within_sets_counts_only_pairs_of_one_output_set(embeddings):
    mechanism = build_mechanism("custext", embeddings, 3.0, top_k=5)
    laws = exact_log_laws(mechanism, np.arange(embeddings.size))
    same_set = np.isfinite(laws[:, None, :]) == np.isfinite(laws[None, :, :])
    pairs = nearest_pairs(mechanism, np.arange(10), 3)
    assert len(pairs) and all(same_set[a, b].all() for a, b in pairs)
    across = next((0, b) for b in range(embeddings.size) if not same_set[0, b].all())
    table = audit_pairs(mechanism, [tuple(pairs[0]), across], SETTINGS)
    assert table["counted"].tolist() == [True, False] and math.isnan(table.loc[1, "loss"])
    assert table.loc[0, "distance"] == 1.0 and 0 < table.loc[0, "loss"] <= 3.0


def test_pairs_audited_in_parts_share_one_correction(embeddings):
    """Tables from separate tasks, each corrected for the whole family of
    pairs, summarize to the audit of all pairs at once."""
    mechanism = build_mechanism("mlap", embeddings, 3.0)
    pairs = nearest_pairs(mechanism, np.arange(6), 2)
    whole = audit_pairs(mechanism, pairs, SETTINGS)
    parts = pd.concat([audit_pairs(mechanism, part, SETTINGS, family_size=len(pairs))
                       for part in np.array_split(pairs, 3)], ignore_index=True)
    pd.testing.assert_frame_equal(whole, parts)
    assert whole["bound_confidence"].iloc[0] == pytest.approx(1 - 0.05 / (2 * len(pairs)))
    combined = summarize(mechanism, parts, SETTINGS, seconds=0.0)
    assert combined.loss == whole["loss"].max() and combined.pairs == len(pairs)


def test_outputs_are_written(embeddings, tmp_path):
    results = [audit(build_mechanism("tem", embeddings, 3.0), SETTINGS),
               audit(build_mechanism("santext", embeddings, 3.0, sensitive_fraction=0.5), SETTINGS)]
    paths = write_outputs(results, tmp_path)
    assert [p.name for p in paths] == ["audit_pairs.csv", "audit_summary.csv", "audit.png"]
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = pd.read_csv(paths[1])
    assert summary["mechanism"].tolist() == ["tem", "santext"] and summary["loss"].iloc[1] == math.inf
    assert len(pd.read_csv(paths[0])) == sum(r.pairs for r in results)


def test_command_line_prints_the_verdict_and_exits_by_it(embeddings, monkeypatch, tmp_path, capsys):
    """Exit 0 when not refuted, 3 when refuted, 2 on a usage error (on the
    small vocabulary, given as a config's [embeddings])."""
    np.save(tmp_path / "vectors.npy", embeddings.vectors)
    (tmp_path / "words.txt").write_text("\n".join(embeddings.words.tolist()) + "\n")
    (tmp_path / "audit.toml").write_text(
        f'[embeddings]\nsource = "npy"\npath = "{tmp_path / "vectors.npy"}"\n'
        f'vocabulary = "{tmp_path / "words.txt"}"\nwords_only = false\n')
    command = ["audit", "--mechanism", "tem", "--epsilon", "3", "--words", "5", "--output", str(tmp_path),
               "--config", str(tmp_path / "audit.toml")]
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "books:    3-d_X" in printed and "not refuted" in printed and (tmp_path / "audit.png").exists()
    monkeypatch.setattr("dp_spark.resources.build_mechanism", lambda name, loaded, epsilon, **params:
                        DoubledTem(loaded, epsilon))
    assert main(command) == 3 and "REFUTED" in capsys.readouterr().out
    assert main(["audit", "--mechanism", "tem", "--epsilon", "3", "--param", "beta"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
