"""The SDK's numpy retrieval metrics agree with pytorch-metric-learning's, which the field uses."""

from __future__ import annotations

import numpy as np
import pytest
from coinvision.sdk.errors import DatasetError
from coinvision.sdk.evaluation import calibrate_unknown_threshold, evaluate_retrieval, first_per_class


def _clustered(seed: int, draw: int = 0, n_classes: int = 12, per_class: int = 5, dim: int = 16, noise: float = 0.9):
    """Noisy unit vectors around ``n_classes`` centres fixed by ``seed``; ``draw`` picks a fresh noise sample."""
    centres = np.random.default_rng(seed).normal(size=(n_classes, dim))
    labels = np.repeat(np.arange(n_classes), per_class)
    vectors = centres[labels] + noise * np.random.default_rng([seed, draw]).normal(size=(len(labels), dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32), labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_at_r_and_recall_at_1_match_pytorch_metric_learning(seed: int) -> None:
    torch = pytest.importorskip("torch")
    accuracy = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    catalog, catalog_labels = _clustered(seed)
    query, query_labels = _clustered(seed, draw=1)
    query = query[: len(query) - 3]  # uneven counts: R differs from the query count
    query_labels = query_labels[: len(query)]

    ours = evaluate_retrieval(query, query_labels, catalog, catalog_labels)
    calc = accuracy.AccuracyCalculator(include=("mean_average_precision_at_r", "precision_at_1"),
                                       k="max_bin_count", device=torch.device("cpu"))
    theirs = calc.get_accuracy(torch.from_numpy(query), torch.from_numpy(query_labels), torch.from_numpy(catalog),
                               torch.from_numpy(catalog_labels), ref_includes_query=False)
    assert 0.1 < ours.map_at_r < 0.95  # a task hard enough that a wrong formula would show
    assert ours.map_at_r == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)
    assert ours.recall_at[1] == pytest.approx(theirs["precision_at_1"], abs=1e-6)


def test_recall_at_k_counts_classes_not_neighbours() -> None:
    # The query's own class has the 3rd-best vector, but only ONE other class comes before it.
    catalog = np.array([[1.0, 0.0], [0.99, 0.14], [0.9, 0.44], [0.0, 1.0]], np.float32)
    metrics = evaluate_retrieval(np.array([[1.0, 0.0]], np.float32), ["b"], catalog, ["a", "a", "b", "c"])
    assert metrics.recall_at[1] == 0.0
    assert metrics.recall_at[2] == 1.0


def test_unanswerable_queries_are_left_out_and_bad_inputs_named() -> None:
    catalog, labels = _clustered(3)
    metrics = evaluate_retrieval(catalog[:2], ["0", "not-in-catalog"], catalog, [str(x) for x in labels])
    assert metrics.n_unanswerable == 1 and metrics.recall_at[1] == 1.0
    with pytest.raises(DatasetError, match="NaN"):
        evaluate_retrieval(np.full((1, 16), np.nan, np.float32), ["0"], catalog, labels)
    with pytest.raises(DatasetError, match="dim"):
        evaluate_retrieval(catalog[:, :8], labels, catalog, labels)


def test_unknown_threshold_lets_through_at_most_the_target_share() -> None:
    catalog, catalog_labels = _clustered(4)
    query, query_labels = _clustered(4, draw=1)
    calibration = calibrate_unknown_threshold(query, query_labels, catalog, catalog_labels, target_unknown_accept=0.1)
    assert calibration.unknown_accept_rate <= 0.1
    assert calibration.known_accept_rate > calibration.unknown_accept_rate


def test_first_per_class_keeps_the_first_items_of_each_label_in_order() -> None:
    labels = ["a", "b", "a", "a", "c", "b", "b", "a"]
    assert first_per_class(labels, 2) == [0, 1, 2, 4, 5]
    assert first_per_class(labels, 0) == []
