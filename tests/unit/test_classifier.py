"""The evaluation's classifiers: the fit is the objective's unique minimum."""

import numpy as np
import pyarrow as pa
import pytest

from dp_spark.classifier import BagOfWords, DenseRows, LogisticRegression, SparseRows

PENALTY = 0.01


def problem(classes: int, rows: int = 300, width: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(rows, width)) * rng.uniform(0.1, 10, size=width)
    features[:, 2] = np.where(rng.uniform(size=rows) < 0.7, 0.0, features[:, 2])  # sparse-ish
    signal = (features / features.std(axis=0)) @ rng.normal(size=(width, classes))
    scores = signal + rng.gumbel(size=(rows, classes))
    return features, np.argmax(scores, axis=1)


def scaled_objective_gradient(features: np.ndarray, labels: np.ndarray, classes: int,
                              weights: np.ndarray, intercepts: np.ndarray) -> np.ndarray:
    """The gradient of the documented objective, written out independently:
    mean cross-entropy + PENALTY / 2 |W|^2 in scaled coordinates, with the
    class-0 scores fixed at 0 for two classes."""
    std = features.std(axis=0, ddof=1)
    scaled, scaled_weights = features / std, weights * std[:, None]
    scores = scaled @ scaled_weights + intercepts
    if classes == 2:
        scores = np.column_stack([np.zeros(len(features)), scores])
    probabilities = np.exp(scores - scores.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    residuals = probabilities - np.eye(classes)[labels]
    if classes == 2:
        residuals = residuals[:, 1:]
    residuals /= len(features)
    return np.concatenate([(scaled.T @ residuals + PENALTY * scaled_weights).ravel(), residuals.sum(axis=0)])


@pytest.mark.parametrize("classes", [2, 4])
def test_the_fit_is_the_penalised_objectives_minimum(classes):
    features, labels = problem(classes)
    model = LogisticRegression.fit(DenseRows(features), labels, classes, penalty=PENALTY)
    # strictly convex: a zero gradient proves the minimum; at the start (all zero) it is of order 0.1-1
    start = scaled_objective_gradient(features, labels, classes, np.zeros_like(model.coefficients),
                                      np.zeros_like(model.intercepts))
    gradient = scaled_objective_gradient(features, labels, classes, model.coefficients, model.intercepts)
    assert np.abs(start).max() > 0.05
    assert np.abs(gradient).max() < 1e-4


def test_two_classes_match_newtons_method():
    features, labels = problem(2)
    model = LogisticRegression.fit(DenseRows(features), labels, 2, penalty=PENALTY)
    std = features.std(axis=0, ddof=1)
    design = np.column_stack([features / std, np.ones(len(features))])
    penalty = np.diag([PENALTY] * features.shape[1] + [0.0])
    parameters = np.zeros(design.shape[1])
    for _ in range(30):  # Newton's method on the same objective, to machine precision
        p = 1 / (1 + np.exp(-design @ parameters))
        gradient = design.T @ (p - labels) / len(labels) + penalty @ parameters
        hessian = design.T @ (design * (p * (1 - p))[:, None]) / len(labels) + penalty
        parameters -= np.linalg.solve(hessian, gradient)
    np.testing.assert_allclose(model.coefficients[:, 0], parameters[:-1] / std, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(model.intercepts, parameters[-1:], rtol=1e-3, atol=1e-5)
    expected = (design @ parameters > 0).astype(int)
    assert (model.predict(DenseRows(features)) == expected).mean() > 0.99


def test_sparse_and_dense_rows_give_the_same_model():
    features, labels = problem(3)
    rows, columns = np.nonzero(features)
    sparse = SparseRows(rows, columns, features[rows, columns], features.shape)
    dense_model = LogisticRegression.fit(DenseRows(features), labels, 3)
    sparse_model = LogisticRegression.fit(sparse, labels, 3)
    np.testing.assert_allclose(sparse_model.coefficients, dense_model.coefficients, rtol=1e-6, atol=1e-9)
    assert (sparse_model.predict(sparse) == dense_model.predict(DenseRows(features))).all()


def test_a_constant_feature_gets_no_weight():
    features, labels = problem(2)
    features[:, 0] = 3.0
    model = LogisticRegression.fit(DenseRows(features), labels, 2)
    assert model.coefficients[0, 0] == 0.0 and np.isfinite(model.coefficients).all()


def test_bag_of_words_counts_the_most_frequent_training_words_weighted_by_idf():
    train = pa.array(["The cat's hat", "a cat, a CAT", "dog", None])
    words = BagOfWords.fit(train, max_words=3)
    # a and cat twice; the tie among the words seen once goes to the first in order, "cat's"
    assert sorted(words.words.to_pylist()) == ["a", "cat", "cat's"]
    idf = dict(zip(words.words.to_pylist(), words.idf))
    assert idf["a"] == pytest.approx(np.log(5 / 2)) and idf["cat's"] == pytest.approx(np.log(5 / 2))
    features = words.features(pa.array(["A cat a  dog", "cat's cat's!", "nothing known"]))
    dense = np.zeros(features.shape)
    dense[features.rows, features.columns] = features.values
    column = {w: k for k, w in enumerate(words.words.to_pylist())}
    assert dense[0, column["a"]] == pytest.approx(2 * np.log(5 / 2))
    assert dense[0, column["cat"]] == pytest.approx(np.log(5 / 2))
    assert dense[1, column["cat's"]] == pytest.approx(2 * np.log(5 / 2))
    assert not dense[2].any()
