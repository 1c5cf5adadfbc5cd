"""The mechanism interface: construction errors, batches, seeds, OOV, epsilon."""

from __future__ import annotations

import numpy as np
import pytest

from dp_spark.embeddings import Embeddings
from dp_spark.index import neighbour_table
from dp_spark.mechanisms import MECHANISMS, build_mechanism
from dp_spark.mechanisms.tgumbel import minimum_epsilon
from dp_spark.randomness import KeyedRandom


@pytest.fixture(scope="module")
def table(small_embeddings):
    return neighbour_table(small_embeddings, 32, use_cache=False)


@pytest.fixture(scope="module")
def floor(small_embeddings, table):
    return minimum_epsilon(small_embeddings.size, table.min_distance)


VARIANTS = [(name, {}) for name in sorted(MECHANISMS)] + [
    ("tgumbel", {"max_distance": 1.5}),
    ("kde", {"sampler": "mh"}),
    ("santext", {"sensitive_fraction": 0.5}),
    ("custext", {"strategy": "aggressive"}),
    ("vickrey", {"base": "mahalanobis"}),
    ("mlap", {"max_distance": 1.0}),
]


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: v[0] + "".join(f"-{k}" for k in v[1]))
def mechanism(request, small_embeddings, table, floor):
    name, params = request.param
    if MECHANISMS[name].needs_neighbours:
        params = {**params, "neighbours": table}
    epsilon = 2 * floor if name == "tgumbel" else 2.0
    return build_mechanism(name, small_embeddings, epsilon=epsilon, **params)


def test_unknown_mechanism_lists_the_allowed_names(small_embeddings):
    with pytest.raises(ValueError, match=r"mechanism must be one of custext, diffractor, kde, mahalanobis, mlap, santext, tem, tgumbel, vickrey; got 'laplace'"):
        build_mechanism("laplace", small_embeddings, epsilon=1.0)


def test_unknown_parameter_is_named_with_the_allowed_ones(small_embeddings):
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) radius for mechanism 'mlap'; allowed: index_type, max_distance, recall, index, neighbours"):
        build_mechanism("mlap", small_embeddings, epsilon=1.0, radius=3)


@pytest.mark.parametrize("epsilon", [0, -1.0, float("nan"), float("inf"), "10", True, None])
def test_invalid_epsilon(small_embeddings, epsilon):
    with pytest.raises(ValueError, match="epsilon must be a positive"):
        build_mechanism("mlap", small_embeddings, epsilon=epsilon)


def test_invalid_mlap_parameters(small_embeddings):
    with pytest.raises(ValueError, match="index_type must be one of flat, hnsw, ivf; got 'lsh'"):
        build_mechanism("mlap", small_embeddings, epsilon=1.0, index_type="lsh")
    with pytest.raises(ValueError, match="max_distance must be a positive"):
        build_mechanism("mlap", small_embeddings, epsilon=1.0, max_distance=-2)


def test_table_from_other_embeddings_is_refused(small_embeddings, table, floor):
    other = Embeddings.from_arrays(small_embeddings.words, small_embeddings.vectors * 2)
    with pytest.raises(ValueError, match="other embeddings"):
        build_mechanism("tgumbel", other, epsilon=10 * floor, neighbours=table)


def test_batch_contract(mechanism):
    rng = np.random.default_rng(0)
    assert mechanism.perturb(np.array([], dtype=np.int64), rng).shape == (0,)
    ids = np.array([5, -1, 7, -1, 199], dtype=np.int32)
    out = mechanism.perturb(ids, rng)
    assert out.dtype == np.int64 and out.shape == ids.shape
    assert out[1] == -1 and out[3] == -1
    assert ((out[[0, 2, 4]] >= 0) & (out[[0, 2, 4]] < 200)).all()
    with pytest.raises(ValueError, match="vocabulary size 200"):
        mechanism.perturb(np.array([200]), rng)
    with pytest.raises(ValueError, match="1-D"):
        mechanism.perturb(np.zeros((2, 2), dtype=np.int64), rng)


def test_same_seed_same_output_other_seed_other_output(mechanism):
    ids = np.random.default_rng(1).integers(0, 200, 5000)
    first = mechanism.perturb(ids, np.random.default_rng(42))
    np.testing.assert_array_equal(first, mechanism.perturb(ids, np.random.default_rng(42)))
    assert (first != mechanism.perturb(ids, np.random.default_rng(43))).mean() > 0.05


def test_perturb_words_oov_policies(mechanism):
    words = ["w001", "not-a-word", "w002"]
    kept = mechanism.perturb_words(words, np.random.default_rng(0))
    assert len(kept) == 3 and kept[1] == "not-a-word" and kept[0].startswith("w")
    assert len(mechanism.perturb_words(words, np.random.default_rng(0), oov="drop")) == 2
    replaced = mechanism.perturb_words(words, np.random.default_rng(0), oov="replace", placeholder="[X]")
    assert replaced[1] == "[X]"
    with pytest.raises(ValueError, match="oov must be one of keep, drop, replace; got 'skip'"):
        mechanism.perturb_words(words, np.random.default_rng(0), oov="skip")


def survival_rate(mechanism, draws=20_000):
    """Mean N_w over 20 words, the fraction of draws returning the word itself."""
    words = np.repeat(np.arange(0, 200, 10), draws // 20)
    return float((mechanism.perturb(words, np.random.default_rng(9)) == words).mean())


def test_nw_falls_as_epsilon_falls_mlap(small_embeddings):
    rates = [survival_rate(build_mechanism("mlap", small_embeddings, epsilon=e)) for e in (8.0, 4.0, 2.0, 1.0)]
    assert all(a > b + 0.02 for a, b in zip(rates, rates[1:])), rates


def test_nw_falls_as_epsilon_falls_tgumbel(small_embeddings, table, floor):
    """Only over decades of epsilon: b falls logarithmically, and below about
    10 x epsilon_min the choice is already uniform over the k + 1 candidates
    (N_w ~ E[1/(k+1)] ~ 0.22 here)."""
    rates = [
        survival_rate(build_mechanism("tgumbel", small_embeddings, epsilon=f * floor, neighbours=table))
        for f in (1e5, 1e3, 10.0)
    ]
    assert all(a > b + 0.01 for a, b in zip(rates, rates[1:])), rates


def test_default_embeddings_example():
    """The README example: valid epsilon gives in-vocabulary substitutes; the
    issue's epsilon = 10 is below epsilon_min ~ 79.8 on GloVe 100k and refused."""
    e = Embeddings.default()
    words = ["the", "movie", "was", "terrible"]
    m = build_mechanism("tgumbel", e, epsilon=100)
    out = m.perturb_words(words, np.random.default_rng(0))
    assert len(out) == 4 and (e.ids(out) >= 0).all()
    assert m.describe()["delta_min"] == pytest.approx(0.3514, abs=1e-4)
    with pytest.raises(ValueError, match=r"epsilon_min = .*79\.7"):
        build_mechanism("tgumbel", e, epsilon=10)
    mlap = build_mechanism("mlap", e, epsilon=20)
    ids = e.ids(words * 250)
    assert (mlap.perturb(ids, np.random.default_rng(0)) == ids).mean() > 0.9
    noisy = build_mechanism("mlap", e, epsilon=5, index=mlap.index)
    assert (noisy.perturb(ids, np.random.default_rng(0)) == ids).mean() < 0.3


def test_keyed_randomness_makes_output_independent_of_batching(mechanism):
    """With per-token keys, a token's output does not depend on which batch,
    or which position in a batch, it is perturbed in, nor on the OOV tokens
    around it."""
    rng = np.random.default_rng(3)
    ids = rng.integers(-1, 200, 3000)
    keys = rng.integers(0, 2**63, 3000).astype(np.uint64)
    whole = mechanism.perturb(ids, KeyedRandom(keys))
    order = rng.permutation(3000)
    parts = [order[:1000], order[1000:1001], order[1001:]]
    for part in parts:
        np.testing.assert_array_equal(mechanism.perturb(ids[part], KeyedRandom(keys[part])), whole[part])
    assert (whole != mechanism.perturb(ids, KeyedRandom(keys + np.uint64(1)))).mean() > 0.05


BOOKED = {
    "mlap": ("pure", "euclidean"),
    "tgumbel": ("none", None),
    "kde": ("pure", "euclidean"),
    "mahalanobis": ("pure", "regularised Mahalanobis d_RM (lambda = 0.2)"),
    "vickrey": ("pure", "euclidean"),
    "tem": ("pure", "euclidean"),
    "santext": ("pure", "euclidean"),
    "custext": ("within_sets", "0/1 within an output set, unbounded across sets"),
    "diffractor": ("pure", "list position (1 list, list seed 0)"),
    "tgumbel-max_distance": ("none", None),
    "kde-sampler": ("none", None),
    "santext-sensitive_fraction": ("none", None),
    "custext-strategy": ("none", None),
    "vickrey-base": ("pure", "regularised Mahalanobis d_RM (lambda = 0.2)"),
    "mlap-max_distance": ("approximate", "euclidean"),
}


def test_each_mechanism_books_the_guarantee_it_provides(mechanism, request):
    """tgumbel, kde mh, santext+ and aggressive custext promise nothing; the
    others promise epsilon per unit of their metric, mlap with max_distance
    with delta_R on top (the regression: tgumbel booked epsilon 100)."""
    kind, metric = BOOKED[request.node.callspec.id]
    guarantee = mechanism.guarantee()
    assert (guarantee.kind, guarantee.metric) == (kind, metric)
    if kind == "none":
        assert guarantee.epsilon is None and guarantee.statement.startswith("no guarantee")
    else:
        assert guarantee.epsilon == mechanism.epsilon
    assert (guarantee.delta > 0) == (kind == "approximate")
    assert mechanism.describe()["guarantee"] == kind


def test_a_huge_batch_is_perturbed_in_bounded_chunks_with_the_same_keyed_noise(small_embeddings, table, caplog):
    """A very long row reaches the mechanism as one batch: it is cut into
    chunks (progress logged), and keyed noise does not depend on the cut."""
    mechanism = build_mechanism("tem", small_embeddings, 2.0, neighbours=table)
    ids = np.arange(5000) % small_embeddings.size
    keys = np.arange(5000, dtype=np.uint64) * np.uint64(7919)
    whole = mechanism.perturb(ids, KeyedRandom(keys))
    mechanism.MAX_TOKENS_PER_CALL = 1024
    caplog.set_level("INFO")
    np.testing.assert_array_equal(mechanism.perturb(ids, KeyedRandom(keys)), whole)
    assert "tem: 5000 of 5000 tokens of this batch perturbed" in caplog.text
