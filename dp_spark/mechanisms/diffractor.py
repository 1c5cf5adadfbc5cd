"""1-Diffractor: noise on a word's position in ordered word lists.

Meisenbacher, Chevli, Matthes. "1-Diffractor: Efficient and Utility-Preserving
Text Obfuscation Leveraging Word-Level Metric Differential Privacy". IWSPA
2024 (arXiv 2405.01678); peer package ``dp-diffractor``.

Lists. The vocabulary is laid out on L ordered lists, each a greedy
nearest-neighbour chain: start at a word, then keep appending the word
nearest (Euclidean) to the last one among those not yet on the list. The
next step is the first unvisited word of the last word's neighbour-table row
(its K nearest, nearest first), which is the nearest unvisited word overall;
only when all K are visited does an exact search over the unvisited words
run. The L start words are drawn from a public ``list_seed``: the lists are
public, and nothing about the privacy depends on keeping them secret. Every
list is a permutation of the vocabulary (checked whenever lists are built or
given), so every word has a position pos_i(w) on every list i. The peer
builds one list per embedding model, each over its own filtered vocabulary;
here there is one embedding space and the lists differ by their start words.

Per token w (n = |V| positions, j = pos_i(w)):
1. choose a list i uniformly among the L;
2. draw a noisy position j' on it (``method``):
   - ``geometric`` (default): j' = clip(j + G1 - G2, 0, n - 1), G1, G2
     independent with P[G = g] = (1 - a) a^g, a = e^-epsilon (g = 0, 1, ...),
     so k = G1 - G2 has the two-sided geometric law
         P[k] = (1 - a) / (1 + a) a^|k|    (proportional to e^(-epsilon |k|)),
     and the clamped law is, for 0 < j' < n - 1, (1 - a) / (1 + a) a^|j' - j|,
     with the tails gathered at the ends: P[0] = a^j / (1 + a),
     P[n - 1] = a^(n - 1 - j) / (1 + a) (P[0] = 1 when n = 1);
   - ``tem``: the peer's truncated exponential mechanism on positions: the
     window of positions within ``gamma`` of j scored -|j' - j|, a bottom
     element scored -gamma + (2 / epsilon) ln(number of positions outside the
     window), Gumbel(0, 2 / epsilon) noise, argmax, and a uniform position
     outside the window when the bottom wins. In closed form (derived: the
     Gumbel-max picks each candidate with probability proportional to
     e^(epsilon score / 2), and the bottom's mass splits evenly over the
     positions outside the window, each at distance > gamma):
         P[j'] proportional to exp(-epsilon min(|j' - j|, gamma) / 2),
     sampled in that form, exactly (a segment, then an inverse CDF inside it);
3. output the word at position j' of list i.
The output law is the average over lists of the per-list laws
(``distribution``). Choosing the list first and drawing noise on it alone has
the same law as the peer's "perturb on every list, then pick one output
uniformly", at 1/L of the work.

Guarantee (derived; d_i(x, x') = |pos_i(x) - pos_i(x')|):
- geometric, one list: k has P[k] / P[k + t] <= e^(epsilon |t|), so j + k is
  epsilon d_i-private; clamping is post-processing. The bound is reached at
  the ends: P[0 | x] / P[0 | x'] = e^(epsilon (pos(x') - pos(x))).
- tem, one list: an exponential mechanism with utility
  u(j, j') = -min(|j' - j|, gamma), and |u(j, j') - u(j2, j')| <=
  min(|j - j2|, gamma) (min with gamma keeps it 1-Lipschitz and bounded by
  gamma); numerator and normaliser each move by at most
  e^(epsilon min(d_i, gamma) / 2): epsilon min(d_i, gamma)-private, so also
  (epsilon gamma)-LDP outright. Here that bound is loose by up to a factor
  2: the normaliser hardly moves with j (only near the list's ends), so the
  loss realised is close to epsilon min(d_i, gamma) / 2 (the tests measure
  both sides).
- the mixture over L lists: P[y | x] = (1/L) sum_i P_i[y | x] <=
  (1/L) sum_i e^(epsilon d_i) P_i[y | x'] <= e^(epsilon max_i d_i) P[y | x'],
  so epsilon-d with d(x, x') = max_i |pos_i(x) - pos_i(x')| (for tem,
  min(gamma, max_i d_i)). Each max_i d_i is a metric (the lists are
  permutations, so d = 0 only for x = x'); with several lists the bound is
  an upper bound, not always reached. It needs every word on every list,
  which the peer does not ensure (a word missing from one model's list is
  dropped from the choice, so the mixture's weights depend on the input).
``metric_distances`` gives the metric for the auditor.

Other differences from the peer package: every in-vocabulary token is
perturbed (the peer passes stopwords through unprotected; here the job's
OOV policy decides what is not a vocabulary word), epsilon is per unit of
position (the peer's ``sensitivity`` only rescales it), the peer's TEM loops
forever when the window covers the whole list (here the bottom then has no
mass), and its fixed noise seed 42 is replaced by the job's secret keys.

Speed: per token one uniform picks the list, two give the noise, and two
gathers map word -> position -> word; no search, no loop per token.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dp_spark.embeddings import Embeddings
from dp_spark.guarantees import Guarantee
from dp_spark.index import DEFAULT_NEIGHBOURS, NeighbourTable, default_cache_dir, neighbour_table
from dp_spark.mechanisms.base import Mechanism, choice, positive_int
from dp_spark.randomness import TokenRandom

log = logging.getLogger(__name__)

METHODS = ("geometric", "tem")
DEFAULT_GAMMA = 5
# Smaller vocabularies build their lists in a fraction of a second, so they
# are not cached: the config check's stand-in vocabulary and test fixtures
# stay out of the user's cache.
CACHE_MIN_WORDS = 10_000


@dataclass(frozen=True, eq=False)
class WordLists:
    """L orderings of the vocabulary: ``orders[i, p]`` is the word at position
    p of list i, int32 (L, |V|), each row a permutation; ``positions`` is its
    inverse, ``positions[i, w]`` the position of word w on list i. ``seed``
    drew the start words, ``fingerprint`` names the embeddings."""

    orders: np.ndarray
    seed: int
    fingerprint: str
    positions: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        orders = np.asarray(self.orders)
        if orders.ndim != 2 or orders.shape[0] < 1 or orders.shape[1] < 1:
            raise ValueError(f"word lists must be a (lists, vocabulary size) matrix, got shape {orders.shape}")
        if not np.issubdtype(orders.dtype, np.integer):
            raise ValueError(f"word lists must hold integer word ids, got {orders.dtype}")
        count, size = orders.shape
        if orders.min() < 0 or orders.max() >= size:
            raise ValueError(f"word lists hold ids outside [0, {size})")
        orders = orders.astype(np.int32)
        positions = np.full((count, size), -1, dtype=np.int32)
        positions[np.arange(count)[:, None], orders] = np.arange(size, dtype=np.int32)[None, :]
        incomplete = np.flatnonzero((positions < 0).any(axis=1))
        if len(incomplete):
            missing = int((positions[incomplete[0]] < 0).sum())
            raise ValueError(
                f"list {int(incomplete[0])} misses {missing} vocabulary word(s): every word must be on "
                f"every list exactly once, or the mixture over lists has no guarantee"
            )
        object.__setattr__(self, "orders", orders)
        object.__setattr__(self, "positions", positions)

    @property
    def count(self) -> int:
        return self.orders.shape[0]

    @property
    def size(self) -> int:
        return self.orders.shape[1]


def cached_word_lists(
    embeddings: Embeddings,
    count: int,
    seed: int,
    neighbours: NeighbourTable | None = None,
    *,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> WordLists:
    """The ``count`` greedy lists of ``embeddings`` started from ``seed``,
    from the on-disk cache when it holds them for the same (embeddings, count,
    seed, neighbour-table K), else built and cached (from CACHE_MIN_WORDS words up)."""
    if neighbours is not None and neighbours.fingerprint != embeddings.fingerprint:
        raise ValueError("the neighbour table was built from other embeddings")
    if neighbours is None:
        neighbours = neighbour_table(embeddings, DEFAULT_NEIGHBOURS, cache_dir=cache_dir, use_cache=use_cache)
    use_cache = use_cache and embeddings.size >= CACHE_MIN_WORDS
    path = Path(cache_dir or default_cache_dir()) / (
        f"diffractor-lists-{embeddings.fingerprint[:20]}-n{count}-seed{seed}-k{neighbours.k}.npz"
    )
    if use_cache and path.exists():
        lists = _load_lists(path, embeddings, count, seed)
        if lists is not None:
            log.info("diffractor lists loaded from cache %s", path)
            return lists
    lists = build_word_lists(embeddings, count, seed, neighbours)
    if use_cache:
        _save_lists(path, lists)
        log.info("diffractor lists cached at %s", path)
    return lists


def build_word_lists(embeddings: Embeddings, count: int, seed: int, neighbours: NeighbourTable) -> WordLists:
    """``count`` greedy nearest-neighbour chains over the vocabulary, started
    at words drawn with ``seed``."""
    if neighbours.fingerprint != embeddings.fingerprint:
        raise ValueError("the neighbour table was built from other embeddings")
    starts = list_starts(embeddings.size, count, seed)
    orders = np.stack([greedy_chain(embeddings.vectors, neighbours.ids, int(start)) for start in starts])
    return WordLists(orders, seed, embeddings.fingerprint)


def list_starts(size: int, count: int, seed: int) -> np.ndarray:
    """The start words of the lists, drawn with the public ``seed``: distinct
    while there are words enough, then repeating (identical lists)."""
    return np.resize(np.random.default_rng(seed).permutation(size), count)


def greedy_chain(vectors: np.ndarray, neighbour_ids: np.ndarray, start: int) -> np.ndarray:
    """All words, from ``start`` on, each followed by the nearest word not yet
    in the chain: the first unvisited word of its table row (rows are nearest
    first), else an exact search over the unvisited words."""
    size = len(vectors)
    visited = np.zeros(size, dtype=bool)
    unvisited = _UnvisitedWords(vectors)
    order = np.empty(size, dtype=np.int32)
    current = start
    for step in range(size):
        order[step] = current
        visited[current] = True
        unvisited.remove(current)
        if step == size - 1:
            break
        row = neighbour_ids[current]
        candidate = row[visited[row].argmin()]
        current = unvisited.nearest(current) if visited[candidate] else candidate
    return order


class _UnvisitedWords:
    """Exact nearest unvisited word to a given word. The unvisited words are
    kept packed (vectors and squared norms); a removed word's norm becomes
    +inf so it never wins, and the arrays are repacked once a quarter of their
    rows are removed, so a search costs about (unvisited words x dim)."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.ids = np.arange(len(vectors))
        self.slot_of = np.arange(len(vectors))
        self.packed = self.vectors.copy()
        squared_norms = (self.vectors.astype(np.float64) ** 2).sum(axis=1)
        self.norms = squared_norms.astype(np.float32)
        # float32 scores |x|^2 - 2 x.q err by ~1e-7 of the squared norms in
        # them; rows scored within this of the best are compared in float64.
        self.tolerance = 2e-5 * float(squared_norms.max())
        self.removed = 0

    def remove(self, word: int) -> None:
        self.norms[self.slot_of[word]] = np.inf
        self.removed += 1
        if self.removed * 4 > len(self.ids) and len(self.ids) > 256:
            alive = np.isfinite(self.norms)
            self.ids, self.packed, self.norms = self.ids[alive], self.packed[alive], self.norms[alive]
            self.slot_of[self.ids] = np.arange(len(self.ids))
            self.removed = 0

    def nearest(self, word: int) -> int:
        query = self.vectors[word]
        # |x|^2 - 2 x.q ranks by distance to q in one float32 product; the
        # rows within its rounding of the best are then compared in float64,
        # ties to the smallest id, so the result does not hang on BLAS rounding.
        scores = self.packed @ (-2.0 * query)
        scores += self.norms
        close = np.flatnonzero(scores <= scores.min() + self.tolerance)
        offsets = self.vectors[self.ids[close]].astype(np.float64) - query.astype(np.float64)
        return int(self.ids[close[np.argmin((offsets**2).sum(axis=1))]])


def _save_lists(path: Path, lists: WordLists) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as tmp:
        np.savez(tmp, orders=lists.orders, seed=np.int64(lists.seed), fingerprint=np.array(lists.fingerprint))
    os.replace(tmp.name, path)


def _load_lists(path: Path, embeddings: Embeddings, count: int, seed: int) -> WordLists | None:
    try:
        with np.load(path) as data:
            lists = WordLists(data["orders"], int(data["seed"]), str(data["fingerprint"]))
    except (OSError, KeyError, ValueError) as error:
        log.warning("ignoring unreadable diffractor list cache %s: %s", path, error)
        return None
    expected = (embeddings.fingerprint, embeddings.size, count, seed)
    if (lists.fingerprint, lists.size, lists.count, lists.seed) != expected:
        log.warning("ignoring diffractor list cache %s: built from other embeddings or parameters", path)
        return None
    return lists


class Diffractor(Mechanism):
    name = "diffractor"
    needs_neighbours = True

    LIST_STREAM, NOISE_STREAM = 0, 1

    def __init__(
        self,
        embeddings: Embeddings,
        epsilon: float,
        *,
        lists: int = 1,
        method: str = "geometric",
        gamma: int | None = None,
        list_seed: int = 0,
        neighbours: NeighbourTable | None = None,
        word_lists: WordLists | None = None,
    ) -> None:
        super().__init__(embeddings, epsilon)
        self.lists = positive_int("lists", lists)
        self.method = choice("method", method, METHODS)
        if self.method == "tem":
            self.gamma = DEFAULT_GAMMA if gamma is None else positive_int("gamma", gamma)
        elif gamma is not None:
            raise ValueError(f"gamma applies to method 'tem' only, got gamma={gamma!r} with method 'geometric'")
        else:
            self.gamma = None
        if isinstance(list_seed, bool) or not isinstance(list_seed, (int, np.integer)) or list_seed < 0:
            raise ValueError(f"list_seed must be a non-negative integer, got {list_seed!r}")
        self.list_seed = int(list_seed)
        if word_lists is None:
            word_lists = cached_word_lists(embeddings, self.lists, self.list_seed, neighbours)
        elif not isinstance(word_lists, WordLists):
            raise ValueError(f"word_lists must be WordLists (built by dp_spark), got {type(word_lists).__name__}")
        self.word_lists = _checked_lists(word_lists, embeddings, self.lists, self.list_seed)

    def _perturb_in_vocabulary(self, ids: np.ndarray, rng: TokenRandom) -> np.ndarray:
        lists = self.word_lists
        if self.lists == 1:
            positions = lists.positions[0][ids].astype(np.int64)
        else:
            u = rng.uniform(self.LIST_STREAM, 1)[:, 0]
            chosen = np.minimum((u * self.lists).astype(np.int64), self.lists - 1)
            positions = lists.positions[chosen, ids].astype(np.int64)
        u = rng.uniform(self.NOISE_STREAM, 2)
        noisy = self._geometric(positions, u) if self.method == "geometric" else self._tem(positions, u)
        out = lists.orders[0][noisy] if self.lists == 1 else lists.orders[chosen, noisy]
        return out.astype(np.int64)

    def _geometric(self, positions: np.ndarray, u: np.ndarray) -> np.ndarray:
        """clip(j + G1 - G2, 0, n - 1), G = floor(Exponential(epsilon)) by inverse CDF.
        In float64 the floors are exact integers up to 2^53, i.e. for epsilon > ~4e-15."""
        geometric = np.floor(-np.log(u) / self.epsilon)
        noisy = positions + (geometric[:, 0] - geometric[:, 1])
        return np.clip(noisy, 0, self.embeddings.size - 1).astype(np.int64)

    def _tem(self, positions: np.ndarray, u: np.ndarray) -> np.ndarray:
        """An exact draw from P[j'] ~ exp(-epsilon min(|j' - j|, gamma) / 2):
        u[:, 0] picks a segment (j itself, the offsets 1..a to the left or
        1..b to the right inside the window, or the positions at least gamma
        away), u[:, 1] a position within it."""
        last = self.embeddings.size - 1
        half = self.epsilon / 2
        left = np.minimum(self.gamma - 1, positions)
        right = np.minimum(self.gamma - 1, last - positions)
        far_left = np.maximum(0, positions - self.gamma + 1)
        far = far_left + np.maximum(0, last - positions - self.gamma + 1)
        # sum_{i=1..m} e^(-half i) = e^(-half) (1 - e^(-half m)) / (1 - e^(-half))
        ratio = math.exp(-half) / -math.expm1(-half)
        left_mass = -np.expm1(-half * left) * ratio
        right_mass = -np.expm1(-half * right) * ratio
        far_mass = far * math.exp(-half * self.gamma)
        mass = u[:, 0] * (1.0 + left_mass + right_mass + far_mass)
        in_left = (mass >= 1.0) & (mass < 1.0 + left_mass)
        in_right = (mass >= 1.0 + left_mass) & (mass < 1.0 + left_mass + right_mass)
        in_far = (mass >= 1.0 + left_mass + right_mass) & (far > 0)
        # Offset i in 1..m with P[i] ~ e^(-half i): i = ceil(ln(1 - u (1 - e^(-half m))) / -half).
        span = np.where(in_left, left, right)
        offset = np.ceil(np.log1p(u[:, 1] * np.expm1(-half * span)) / -half)
        offset = np.clip(offset, 1, np.maximum(span, 1)).astype(np.int64)
        far_index = np.minimum((u[:, 1] * far).astype(np.int64), np.maximum(far - 1, 0))
        far_position = np.where(far_index < far_left, far_index, positions + self.gamma + far_index - far_left)
        noisy = positions.copy()
        noisy[in_left] -= offset[in_left]
        noisy[in_right] += offset[in_right]
        noisy[in_far] = far_position[in_far]
        return noisy

    def position_law(self, position: int) -> np.ndarray:
        """P[j' | j = position] over the n positions of one list (closed form)."""
        size = self.embeddings.size
        offsets = np.abs(np.arange(size) - position)
        if self.method == "tem":
            weights = np.exp(-self.epsilon / 2 * np.minimum(offsets, self.gamma))
            return weights / weights.sum()
        if size == 1:
            return np.ones(1)
        a = math.exp(-self.epsilon)
        law = (1 - a) / (1 + a) * np.exp(-self.epsilon * offsets)
        law[0] = math.exp(-self.epsilon * position) / (1 + a)
        law[-1] = math.exp(-self.epsilon * (size - 1 - position)) / (1 + a)
        return law

    def distribution(self, word: int) -> np.ndarray:
        """P[M(word) = y] for every y: the average of the lists' position laws."""
        out = np.zeros(self.embeddings.size)
        for orders, positions in zip(self.word_lists.orders, self.word_lists.positions):
            out[orders] += self.position_law(int(positions[word])) / self.lists
        return out

    def metric_distances(self, word: int) -> np.ndarray:
        """d(word, x') for every x', the metric the guarantee is stated in:
        max over lists of |pos_i(word) - pos_i(x')|, capped at gamma for tem."""
        positions = self.word_lists.positions.astype(np.int64)
        distances = np.abs(positions - positions[:, word : word + 1]).max(axis=0)
        return distances if self.gamma is None else np.minimum(distances, self.gamma)

    @property
    def metric(self) -> str:
        lists = "1 list" if self.lists == 1 else f"max over {self.lists} lists"
        where = f"{lists}, list seed {self.list_seed}"
        if self.method == "tem":
            return f"list position, capped at gamma = {self.gamma} ({where})"
        return f"list position ({where})"

    def guarantee(self) -> Guarantee:
        return Guarantee.pure(self.epsilon, self.metric)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "lists": self.lists,
            "method": self.method,
            "gamma": self.gamma,
            "list_seed": self.list_seed,
            "list_starts": self.word_lists.orders[:, 0].tolist(),
            "vocab_size": self.embeddings.size,
        }


def _checked_lists(lists: WordLists, embeddings: Embeddings, count: int, seed: int) -> WordLists:
    if lists.fingerprint != embeddings.fingerprint or lists.size != embeddings.size:
        raise ValueError("the word lists were built from other embeddings")
    if (lists.count, lists.seed) != (count, seed):
        raise ValueError(
            f"the word lists hold {lists.count} list(s) from list seed {lists.seed}; "
            f"the mechanism was asked for lists={count}, list_seed={seed}"
        )
    return lists
