"""groco.knn: weighted k-NN vote against a brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest

from groco.knn import class_indices, knn_accuracy, knn_vote, weighted_knn_predict


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference_predict(bank, labels, queries, k, temperature, num_classes, exclude_self=False):
    """One query at a time, straight from the formula."""
    preds = []
    for i, q in enumerate(queries):
        sims = [(float(q @ b), j) for j, b in enumerate(bank) if not (exclude_self and j == i)]
        sims.sort(key=lambda t: -t[0])
        scores = np.zeros(num_classes)
        for s, j in sims[:k]:
            scores[labels[j]] += np.exp(s / temperature)
        preds.append(int(np.argmax(scores)))
    return np.array(preds)


def clusters(centres: np.ndarray, n_per_class: int, rng: np.random.Generator):
    labels = np.repeat(np.arange(len(centres)), n_per_class)
    noise = 0.15 * rng.normal(size=(labels.size, centres.shape[1]))
    return normalise(centres[labels] + noise).astype(np.float32), labels


def test_clustered_toy_set_is_classified() -> None:
    rng = np.random.default_rng(0)
    centres = normalise(rng.normal(size=(5, 32)))
    train_x, train_y = clusters(centres, 40, rng)
    test_x, test_y = clusters(centres, 20, rng)
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=10) > 0.95
    # Shuffled labels carry no information: near chance.
    shuffled = rng.permutation(train_y)
    assert knn_accuracy(train_x, shuffled, test_x, test_y, k=10) < 0.5


@pytest.mark.parametrize("k,temperature", [(1, 0.07), (5, 0.07), (20, 0.5), (7, 0.01)])
def test_matches_brute_force_reference(k: int, temperature: float) -> None:
    rng = np.random.default_rng(k)
    bank = normalise(rng.normal(size=(120, 16)))
    labels = rng.integers(0, 4, size=120)
    queries = normalise(rng.normal(size=(45, 16)))
    expected = reference_predict(bank, labels, queries, k, temperature, 4)
    got = weighted_knn_predict(bank, labels, queries, k=k, temperature=temperature, batch_size=8)
    assert got.dtype == np.int64 and got.shape == (45,)
    np.testing.assert_array_equal(got, expected)
    # float32 inputs and one big chunk give the same answer on this data
    got32 = weighted_knn_predict(
        bank.astype(np.float32), labels, queries.astype(np.float32), k=k, temperature=temperature
    )
    np.testing.assert_array_equal(got32, expected)


def test_leave_one_out_excludes_self() -> None:
    rng = np.random.default_rng(3)
    x = normalise(rng.normal(size=(60, 8)))
    y = rng.integers(0, 3, size=60)
    # With self included and k=1, every point is its own nearest neighbour.
    assert knn_accuracy(x, y, x, y, k=1) == 1.0
    loo = weighted_knn_predict(x, y, x, k=1, exclude_self=True, batch_size=16)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    np.testing.assert_array_equal(loo, y[sims.argmax(axis=1)])
    expected = reference_predict(x, y, x, 9, 0.07, 3, exclude_self=True)
    np.testing.assert_array_equal(weighted_knn_predict(x, y, x, k=9, exclude_self=True), expected)
    with pytest.raises(ValueError, match="exclude_self"):
        weighted_knn_predict(x, y, x[:10], exclude_self=True)


def test_temperature_weights_the_vote() -> None:
    # Query close to one class-1 neighbour, farther from two class-0 neighbours.
    bank = normalise(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    labels = np.array([0, 0, 1])
    q = normalise(np.array([[0.5, 0.9]]))
    # Sharp weights: the single close neighbour wins; flat weights: the majority wins.
    assert weighted_knn_predict(bank, labels, q, k=3, temperature=0.07)[0] == 1
    assert weighted_knn_predict(bank, labels, q, k=3, temperature=10.0)[0] == 0


def test_k_capped_num_classes_and_errors() -> None:
    bank = normalise(np.eye(3))
    labels = np.array([0, 1, 2])
    pred = weighted_knn_predict(bank, labels, bank, k=50, num_classes=7)
    np.testing.assert_array_equal(pred, [0, 1, 2])
    with pytest.raises(ValueError, match=">= 0"):
        weighted_knn_predict(bank, np.array([0, -1, 1]), bank)
    with pytest.raises(ValueError, match="num_classes"):
        weighted_knn_predict(bank, labels, bank, num_classes=2)
    with pytest.raises(ValueError, match="dims"):
        weighted_knn_predict(bank, labels, np.ones((2, 4)))
    with pytest.raises(ValueError, match="one label per query"):
        knn_accuracy(bank, labels, bank, labels[:2])


def test_vote_on_given_neighbours_and_class_indices() -> None:
    sims = np.array([[0.9, 0.8, 0.1], [0.5, 0.5, 0.5], [0.2, 0.9, 0.85]])
    labels = np.array([[1, 0, 0], [2, 0, 1], [0, 1, 1]])
    # row 0: class 1 weighs exp(0.9/T) > exp(0.8/T) + exp(0.1/T) at T = 0.07; row 1: a
    # three-way tie goes to the smallest class; row 2: 0.9 and 0.85 outvote 0.2
    assert knn_vote(sims, labels, num_classes=3, temperature=0.07).tolist() == [1, 0, 1]
    # a high temperature flattens the weights: two votes beat one
    assert knn_vote(sims[:1], labels[:1], num_classes=3, temperature=100.0).tolist() == [0]
    with pytest.raises(ValueError, match="one shape"):
        knn_vote(sims, labels[:, :2], num_classes=3)
    classes, idx = class_indices(["dog", None, "cat", "dog"])
    assert classes == ["cat", "dog"] and idx.tolist() == [1, -1, 0, 1]
    assert idx.dtype == np.int64
    assert class_indices([None])[1].tolist() == [-1] and class_indices([])[0] == []
    # an evaluation folder labelled by a training run's classes: unknown names are -1
    classes, idx = class_indices(["bird", "dog", None, "ant"], ["ant", "bird", "cat"])
    assert classes == ["ant", "bird", "cat"] and idx.tolist() == [1, -1, -1, 0]
