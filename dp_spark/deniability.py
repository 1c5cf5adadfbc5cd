"""Plausible deniability of a mechanism, N_w and S_w, over the vocabulary
and over the words of the text a run perturbed, with the per-word figures
cached so that a repeated run pays nothing for them.

Over the vocabulary: a fixed stratified sample of words, each word counted
once. Over the text: the words the run actually perturbed, weighted by how
often they occurred (on SST-2, mlap at epsilon 8 keeps 0.327 of the text's
tokens where the vocabulary sample says 0.49: frequent words sit in denser
regions). Both are properties of the mechanism on public words, never of
the private rows; the per-word figures depend only on the embeddings, the
mechanism and its parameters, the draws and the public seed, which is what
the cache is keyed by.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from dp_spark.index import default_cache_dir
from dp_spark.stats import plausible_deniability, stratified_sample, summarize

log = logging.getLogger(__name__)

TEXT_WORDS = 500  # the most frequent words of the text measured (their share of tokens is reported)


class DeniabilityCache:
    """Per-word N_w and S_w of one mechanism configuration, on disk."""

    def __init__(self, mechanism: Any, draws: int, seed: int = 0, cache_dir: str | Path | None = None) -> None:
        description = json.dumps({"embeddings": mechanism.embeddings.fingerprint, **mechanism.describe(),
                                  "draws": draws, "seed": seed}, sort_keys=True, default=str)
        key = hashlib.sha256(description.encode()).hexdigest()[:24]
        self.path = Path(cache_dir or default_cache_dir()) / "deniability" / f"{mechanism.name}-{key}.npz"
        self.mechanism, self.draws, self.seed = mechanism, draws, seed
        self.known: dict[int, tuple[float, int]] = {}
        if self.path.is_file():
            try:
                with np.load(self.path) as data:
                    self.known = dict(zip(data["words"].tolist(), zip(data["n_w"].tolist(), data["s_w"].tolist())))
            except (OSError, KeyError, ValueError) as error:
                log.warning("ignoring unreadable deniability cache %s: %s", self.path, error)

    def measure(self, words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """N_w and S_w of ``words``, measuring only those not cached yet."""
        words = np.asarray(words, dtype=np.int64)
        missing = np.array(sorted({int(w) for w in words} - set(self.known)), dtype=np.int64)
        if len(missing):
            n_w, s_w = plausible_deniability(self.mechanism, missing, self.draws, seed=self.seed)
            self.known.update(zip(missing.tolist(), zip(n_w.tolist(), s_w.tolist())))
            self._save()
        pairs = [self.known[int(w)] for w in words]
        return np.array([p[0] for p in pairs], float), np.array([p[1] for p in pairs], np.int64)

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        words = np.array(list(self.known), dtype=np.int64)
        values = list(self.known.values())
        with tempfile.NamedTemporaryFile(dir=self.path.parent, suffix=".npz", delete=False) as handle:
            np.savez(handle, words=words, n_w=np.array([v[0] for v in values]),
                     s_w=np.array([v[1] for v in values], np.int64))
        os.replace(handle.name, self.path)


def weighted_summary(values: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    """Mean and the 5/25/50/75/95% quantiles of ``values`` weighted by ``weights`` (token counts)."""
    order = np.argsort(values, kind="stable")
    values, weights = np.asarray(values, float)[order], np.asarray(weights, float)[order]
    if not len(values) or weights.sum() == 0:
        return {k: float("nan") for k in ("mean", "p5", "p25", "p50", "p75", "p95")}
    cumulative = np.cumsum(weights) / weights.sum()
    summary = {"mean": float((values * weights).sum() / weights.sum())}
    for q in (5, 25, 50, 75, 95):
        summary[f"p{q}"] = float(values[min(np.searchsorted(cumulative, q / 100 - 1e-12), len(values) - 1)])
    return summary


def deniability_summary(
    mechanism: Any,
    sample_size: int,
    draws: int,
    text_words: tuple[np.ndarray, np.ndarray] | None = None,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """N_w and S_w summaries over a stratified vocabulary sample (``nw_*``,
    ``sw_*``) and, given the (word ids, counts) a run perturbed, over its text
    (``nw_text_*``, ``sw_text_*``, and ``text_tokens_covered``, the share of
    the text's in-vocabulary tokens whose word was measured)."""
    cache = DeniabilityCache(mechanism, draws, cache_dir=cache_dir)
    sample = stratified_sample(mechanism.embeddings.size, sample_size)
    n_w, s_w = cache.measure(sample)
    summary: dict[str, Any] = {f"nw_{k}": v for k, v in summarize(n_w).items()}
    summary.update({f"sw_{k}": v for k, v in summarize(s_w).items()})
    summary["deniability_source"] = f"{len(sample)} vocabulary words x {draws} draws"
    if text_words is not None:
        words, counts = (np.asarray(a) for a in text_words)
        top = np.argsort(-counts, kind="stable")[:TEXT_WORDS]
        text_n_w, text_s_w = cache.measure(words[top])
        summary.update({f"nw_text_{k}": v for k, v in weighted_summary(text_n_w, counts[top]).items()})
        summary.update({f"sw_text_{k}": v for k, v in weighted_summary(text_s_w, counts[top]).items()})
        summary["text_tokens_covered"] = float(counts[top].sum() / counts.sum()) if counts.sum() else 0.0
    return summary
