"""The whitening benchmark picks its setting on the training classes alone, and whitening there does what it is for:
a direction every photo shares stops drowning the ones that tell coins apart."""

from __future__ import annotations

import numpy as np

from benchmarks.bench_embedder_whiten import fold_recall_at_1


def _photos(rng: np.random.Generator, centres: np.ndarray, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors whose class shows in 8 weak directions, under one strong direction (light, metal) that varies
    from photo to photo whatever the coin."""
    labels = np.repeat(np.arange(len(centres)), per_class)
    design = centres[labels] + 0.3 * rng.standard_normal((len(labels), 8))
    shared = 5.0 * rng.standard_normal((len(labels), 1))
    rows = np.hstack([shared, design])
    return rows / np.linalg.norm(rows, axis=1, keepdims=True), labels.astype(str)


def test_folds_use_only_training_classes_and_whitening_recovers_the_design() -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 8))
    train, train_labels = _photos(rng, centres, 8)
    val, val_labels = _photos(rng, centres, 3)  # other photos of the same classes
    vec = {"train": train, "val_seen": val, "catalog": np.full((3, 9), np.nan), "query": np.full((3, 9), np.nan)}
    labels = {"train": train_labels, "val_seen": val_labels, "catalog": np.array(["x"] * 3),
              "query": np.array(["x"] * 3)}
    plain = fold_recall_at_1(vec, labels, power=0.0, shrink=0.0)  # NaN held-out splits: never read
    half = fold_recall_at_1(vec, labels, power=0.5, shrink=0.0)
    full = fold_recall_at_1(vec, labels, power=1.0, shrink=0.0)
    assert 0.0 <= plain < half < full <= 1.0  # the more the shared direction is evened out, the better here
    assert half - plain > 0.1
