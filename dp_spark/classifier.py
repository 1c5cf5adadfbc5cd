"""The evaluation's classifiers, trained on the driver (pure: numpy, pyarrow;
no Spark).

An evaluation trains two models per seed and (mechanism, epsilon), over a
hundred on the shipped configs, each on a few thousand rows. Spark MLlib's
logistic regression runs a Spark job per L-BFGS iteration, 25-35 per fit
at about 50 ms each however small the data, so the fits bounded the run;
here one fit takes milliseconds. The rows must fit in the driver's memory
(``MAX_ROWS``).

- ``bag_of_words``: a row's lowercased tokens (cut at runs of characters that
  are not letters, digits or apostrophes), counted over the training rows'
  ``max_words`` most frequent words, weighted by their inverse document
  frequency log((rows + 1) / (rows with the word + 1)).
- ``LogisticRegression``: multinomial (binary for two classes), L2 penalty
  on the coefficients of features scaled to unit standard deviation (not
  centred, so sparse rows stay sparse), intercepts unpenalised, minimised by
  L-BFGS until the objective changes by less than ``tolerance`` relative.
  The objective is strictly convex: its minimum is unique, and the gradient
  there is zero (``gradient_norm`` is left in the fitted model to show it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Letters, digits and apostrophes make tokens; every other run cuts them (RE2 syntax).
TOKEN_SEPARATORS = "[^\\p{L}\\p{N}']+"
MAX_ROWS = 2_000_000
PENALTY = 0.01
TOLERANCE = 1e-7


@dataclass(frozen=True)
class SparseRows:
    """A sparse matrix as (row, column, value) triples, rows ascending."""

    rows: np.ndarray
    columns: np.ndarray
    values: np.ndarray
    shape: tuple[int, int]

    def dot(self, weights: np.ndarray) -> np.ndarray:
        """self @ weights (weights: columns x k)."""
        return np.stack([np.bincount(self.rows, self.values * weights[self.columns, k], minlength=self.shape[0])
                         for k in range(weights.shape[1])], axis=1)

    def transpose_dot(self, residuals: np.ndarray) -> np.ndarray:
        """self.T @ residuals (residuals: rows x k)."""
        return np.stack([np.bincount(self.columns, self.values * residuals[self.rows, k], minlength=self.shape[1])
                         for k in range(residuals.shape[1])], axis=1)

    def column_scale(self, scale: np.ndarray) -> SparseRows:
        return SparseRows(self.rows, self.columns, self.values * scale[self.columns], self.shape)

    def column_std(self) -> np.ndarray:
        """Standard deviation of every column (n - 1 in the denominator)."""
        n = self.shape[0]
        sums = np.bincount(self.columns, self.values, minlength=self.shape[1])
        squares = np.bincount(self.columns, self.values**2, minlength=self.shape[1])
        return np.sqrt(np.maximum(squares - sums**2 / n, 0.0) / max(n - 1, 1))


@dataclass(frozen=True)
class DenseRows:
    """A dense matrix with the operations of ``SparseRows``."""

    matrix: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape

    def dot(self, weights: np.ndarray) -> np.ndarray:
        return self.matrix @ weights

    def transpose_dot(self, residuals: np.ndarray) -> np.ndarray:
        return self.matrix.T @ residuals

    def column_scale(self, scale: np.ndarray) -> DenseRows:
        return DenseRows(self.matrix * scale)

    def column_std(self) -> np.ndarray:
        return self.matrix.std(axis=0, ddof=1) if len(self.matrix) > 1 else np.zeros(self.matrix.shape[1])


Features = SparseRows | DenseRows


def _tokens(texts: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(row, token) of every token of a string column, rows ascending."""
    split = pc.split_pattern_regex(pc.utf8_lower(pc.fill_null(texts, "")), TOKEN_SEPARATORS)
    rows = pc.list_parent_indices(split).to_numpy()
    tokens = pc.list_flatten(split)
    nonempty = np.asarray(pc.greater(pc.binary_length(tokens), 0).to_numpy(zero_copy_only=False), dtype=bool)
    return rows[nonempty], tokens.filter(pa.array(nonempty))


@dataclass(frozen=True)
class BagOfWords:
    """The words a bag of words counts, and their inverse document frequencies."""

    words: pa.Array
    idf: np.ndarray

    @classmethod
    def fit(cls, texts: pa.Array, max_words: int) -> BagOfWords:
        rows, tokens = _tokens(texts)
        encoded = tokens.dictionary_encode()
        ids = encoded.indices.to_numpy()
        frequency = np.bincount(ids, minlength=len(encoded.dictionary))
        # ties broken by the word, so that the vocabulary does not depend on row order
        order = np.lexsort((pc.array_sort_indices(encoded.dictionary).to_numpy().argsort(), -frequency))
        kept = np.sort(order[:max_words])
        words = len(encoded.dictionary)
        document_frequency = np.bincount(np.unique(rows * words + ids) % words, minlength=words)
        idf = np.log((len(texts) + 1) / (document_frequency[kept] + 1))
        return cls(encoded.dictionary.take(pa.array(kept)), idf)

    def features(self, texts: pa.Array) -> SparseRows:
        rows, tokens = _tokens(texts)
        ids = pc.index_in(tokens, value_set=self.words)
        known = np.asarray(ids.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        keys = rows[known] * len(self.words) + ids.filter(pa.array(known)).to_numpy()
        pairs, counts = np.unique(keys, return_counts=True)
        columns = pairs % len(self.words)
        return SparseRows(pairs // len(self.words), columns, counts * self.idf[columns], (len(texts), len(self.words)))


@dataclass(frozen=True)
class LogisticRegression:
    """A fitted model: ``coefficients`` (features x k) apply to the raw
    features (the scaling folded in); k = 1 for two classes."""

    coefficients: np.ndarray
    intercepts: np.ndarray
    classes: int
    iterations: int
    gradient_norm: float

    @classmethod
    def fit(cls, features: Features, labels: np.ndarray, classes: int, penalty: float = PENALTY,
            tolerance: float = TOLERANCE, max_iterations: int = 500) -> LogisticRegression:
        """Minimise mean cross-entropy + penalty / 2 * |W|^2 over features
        scaled to unit standard deviation; ``labels``: 0 .. classes - 1."""
        n, width = features.shape
        std = features.column_std()
        scale = np.divide(1.0, std, out=np.zeros_like(std), where=std > 0)  # a constant column gets no weight
        scaled = features.column_scale(scale)
        columns = 1 if classes == 2 else classes
        labels = np.asarray(labels, dtype=np.int64)

        def objective(parameters: np.ndarray) -> tuple[float, np.ndarray]:
            weights = parameters[: width * columns].reshape(width, columns)
            scores = scaled.dot(weights) + parameters[width * columns:]
            if classes == 2:
                scores = np.column_stack([np.zeros(n), scores])
            scores -= scores.max(axis=1, keepdims=True)
            log_normaliser = np.log(np.exp(scores).sum(axis=1))
            loss = float(np.mean(log_normaliser - scores[np.arange(n), labels]))
            residuals = np.exp(scores - log_normaliser[:, None])
            residuals[np.arange(n), labels] -= 1.0
            residuals = residuals[:, 1:] / n if classes == 2 else residuals / n
            gradient = np.concatenate([(scaled.transpose_dot(residuals) + penalty * weights).ravel(),
                                       residuals.sum(axis=0)])
            return loss + 0.5 * penalty * float(np.sum(weights**2)), gradient

        parameters, iterations, gradient = minimise(objective, np.zeros(width * columns + columns), tolerance,
                                                    max_iterations)
        weights = parameters[: width * columns].reshape(width, columns) * scale[:, None]
        return cls(weights, parameters[width * columns:], classes, iterations, float(np.linalg.norm(gradient)))

    def predict(self, features: Features) -> np.ndarray:
        scores = features.dot(self.coefficients) + self.intercepts
        if self.classes == 2:
            return (scores[:, 0] > 0).astype(np.int64)
        return np.argmax(scores, axis=1)


def minimise(objective: Callable[[np.ndarray], tuple[float, np.ndarray]], start: np.ndarray, tolerance: float,
             max_iterations: int, memory: int = 10) -> tuple[np.ndarray, int, np.ndarray]:
    """L-BFGS with a backtracking (Armijo) line search, for a smooth convex
    objective returning (value, gradient): (minimiser, iterations, gradient
    there). Stops when the value changes by less than ``tolerance`` relative
    to it, or the line search can no longer decrease it."""
    x = start
    value, gradient = objective(x)
    steps: list[tuple[np.ndarray, np.ndarray, float]] = []
    for iteration in range(1, max_iterations + 1):
        direction = -_inverse_hessian_times(gradient, steps)
        slope = float(gradient @ direction)
        if slope >= 0:  # not a descent direction: forget the curvature seen
            steps.clear()
            direction, slope = -gradient, -float(gradient @ gradient)
        if slope == 0:
            return x, iteration, gradient
        step = 1.0 if steps else min(1.0, 1.0 / np.sqrt(-slope))
        while True:
            candidate = x + step * direction
            new_value, new_gradient = objective(candidate)
            if new_value <= value + 1e-4 * step * slope:
                break
            step /= 2
            if step < 1e-12:
                return x, iteration, gradient
        moved, change = candidate - x, new_gradient - gradient
        curvature = float(moved @ change)
        if curvature > 1e-12:
            steps = [*steps[-(memory - 1):], (moved, change, 1.0 / curvature)]
        converged = abs(value - new_value) <= tolerance * max(abs(value), abs(new_value), 1e-12)
        x, value, gradient = candidate, new_value, new_gradient
        if converged:
            return x, iteration, gradient
    return x, max_iterations, gradient


def _inverse_hessian_times(gradient: np.ndarray, steps: list[tuple[np.ndarray, np.ndarray, float]]) -> np.ndarray:
    """The L-BFGS two-loop recursion: the inverse Hessian estimate times the gradient."""
    q = gradient.copy()
    alphas = []
    for moved, change, rho in reversed(steps):
        alpha = rho * float(moved @ q)
        q -= alpha * change
        alphas.append(alpha)
    if steps:
        moved, change, _ = steps[-1]
        q *= float(moved @ change) / float(change @ change)
    for (moved, change, rho), alpha in zip(steps, reversed(alphas)):
        q += moved * (alpha - rho * float(change @ q))
    return q
