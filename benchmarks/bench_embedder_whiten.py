"""Whitening a release embedder's output: which power and variance floor, chosen without the held-out classes.

Every photo of the release split goes through ``--models``' own pipeline (TFLite int8, its segmenter, crop, views;
vectors cached as ``bench_embedder_pair`` caches them). For each (power, shrink) of the grid, ``whitened_pca`` (the
trainer's, ``emb_whiten.fit_whitening`` uses it) is fitted on training-class photos and the vectors are re-scored:

- **selection**, training classes only: the 132 training classes in 4 folds (seeded); for each fold the whitening
  is fitted on the other folds' training photos, the fold's classes are the catalog (their first 3 training photos)
  and their held-out photos (``val_seen``) the queries. Recall@1 over the 4 folds picks the setting;
- **report**, the model card's columns (``bench_embedder_pair.split_scores``) with the whitening fitted on every
  training photo: the 34 held-out classes alone and with distractors, the trained classes, pooled.

The trained parts saw the selection's classes in training (not its query photos), so selection figures are higher
than held-out ones; they rank the settings, they do not predict the held-out figure. The shipped whitening is fitted
by ``coinvision train embedder-whiten`` on PyTorch vectors of 4 rotated views per photo, not on these int8 vectors.

    git worktree add /tmp/prev 8c5f0cd   # the release before the whitening
    python -m benchmarks.bench_embedder_whiten --models /tmp/prev/models/release   # ~4 min; vectors cached
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_embedder_ensemble import unit_rows
from benchmarks.bench_embedder_pair import (
    DISTRACTORS_PER_CLASS,
    SPLITS,
    add_split_options,
    pipeline_vectors,
    split_missing,
    split_scores,
)
from benchmarks.common import MISSING_INPUTS_EXIT, RESULTS_DIR, write_result

__all__ = ["fold_recall_at_1", "main"]

POWERS = (0.25, 0.5, 0.75, 1.0)
SHRINKS = (0.0, 0.1, 1.0)
FOLDS = 4


def _whiten(rows: np.ndarray, power: float, shrink: float):
    from coinvision.trainer.emb_branch import whitened_pca

    if power == 0.0:
        return unit_rows
    mean, projection = whitened_pca(rows, rows.shape[1], shrink=shrink, power=power)
    return lambda x: unit_rows((x - mean) @ projection)


def fold_recall_at_1(vec: dict[str, np.ndarray], labels: dict[str, np.ndarray], power: float, shrink: float,
                     seed: int = 0) -> float:
    """Recall@1 of the training classes' held-out photos, each fold's classes searched among themselves with the
    whitening fitted on the other folds' training photos (no held-out class involved)."""
    from coinvision.sdk.evaluation import evaluate_retrieval, first_per_class

    classes = np.array(sorted(set(labels["train"])))
    np.random.default_rng(seed).shuffle(classes)
    hits = total = 0
    for fold in range(FOLDS):
        held = classes[fold::FOLDS]
        fit = ~np.isin(labels["train"], held)
        whiten = _whiten(vec["train"][fit], power, shrink)
        in_fold = np.flatnonzero(~fit)
        catalog = in_fold[first_per_class(list(labels["train"][in_fold]), DISTRACTORS_PER_CLASS)]
        query = np.isin(labels["val_seen"], held)
        metrics = evaluate_retrieval(whiten(vec["val_seen"][query]), list(labels["val_seen"][query]),
                                     whiten(vec["train"][catalog]), list(labels["train"][catalog]))
        hits += metrics.recall_at[1] * int(query.sum())
        total += int(query.sum())
    return hits / total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, required=True, help="a release folder whose embedder is NOT whitened")
    add_split_options(parser)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "embedder_whiten.json")
    args = parser.parse_args(argv)
    if split_missing(args.split, "bench_embedder_whiten"):
        return MISSING_INPUTS_EXIT
    data = pipeline_vectors(args.models, args.split, args.cache)
    vec = {s: data[s] for s in SPLITS}
    labels = {s: data[f"{s}_labels"] for s in SPLITS}
    table: list[dict[str, Any]] = []
    for power, shrink in [(0.0, 0.0)] + [(p, s) for p in POWERS for s in SHRINKS]:
        whiten = _whiten(vec["train"], power, shrink)
        row = {"power": power, "shrink": shrink,
               "selection R@1 (training-class folds)": fold_recall_at_1(vec, labels, power, shrink),
               **split_scores({s: whiten(v) for s, v in vec.items()}, labels)}
        print(" | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
        table.append(row)
    best = max(row["selection R@1 (training-class folds)"] for row in table)
    # ties (the same queries right) go to the larger floor: the setting least fitted to the 132 training classes
    pick = max((row for row in table if row["selection R@1 (training-class folds)"] >= best - 1e-9),
               key=lambda row: (row["shrink"], -abs(row["power"] - 0.5)))
    print(f"picked by the training-class folds: power {pick['power']}, shrink {pick['shrink']}")
    results = {"models": str(args.models), "folds": FOLDS, "distractors_per_class": DISTRACTORS_PER_CLASS,
               "photos": {s: len(labels[s]) for s in SPLITS},
               "picked": {"power": pick["power"], "shrink": pick["shrink"]}}
    path = write_result("embedder_whiten", results, table, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
