"""Two branch embedders side by side: what concatenating their trained parts would buy (issue 12, no training).

Each ``--models`` folder is a release whose embedder is a trained part plus a frozen branch (``trainer/emb_branch.py``).
Every photo of the release split goes through each folder's own pipeline (TFLite int8, its segmenter, crop and
rotated views); each output vector is split back into its trained part (the first ``--trained-dims`` values) and its
branch part, each re-normalised. Rows then concatenate ``sqrt(w1) * trained_A``, ``sqrt(w2) * trained_B`` and
``sqrt(w3) * branch_A`` (a unit vector whose cosine is the weighted sum of the three cosines) and are scored as
``coinvision eval retrieval`` scores the release: the 34 held-out classes, with the training classes' first 3 photos
as distractors, and the training classes' held-out photos against that full catalog.

    python -m benchmarks.bench_embedder_pair --models models/release /tmp/cand   # ~4 min; vectors cached per folder
    python -m benchmarks.bench_embedder_pair --models /tmp/prev/models/release /tmp/cand --views 1 \
        --out benchmarks/results/embedder_pair_1view.json   # one rotated view instead of the folders' own

``--views`` overrides the number of rotated views each folder's pipeline averages (its metadata's
``embed_rotations``). The release built from this measurement embeds ONE view (three backbones per view), so it is
scored at 1 view too; the folders of the model card's runs are the release before it (``git worktree add /tmp/prev
fd26f28``) and ``/tmp/cand``.

``/tmp/cand`` for the model card's figures: models/release with its embedder.tflite(.meta.json) replaced by the
int8 export of the v1 recipe retrained on the grown data (``trainer/configs/embedder_mobilenetv2_v3.yaml`` + the
branch, ``make release-embedder-branch BASE_CKPT=runs/embedder/mnv2_v3/best.pt BRANCH_OUT=runs/embedder/branch_v3``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_embedder_ensemble import unit_rows
from benchmarks.common import MISSING_INPUTS_EXIT, RESULTS_DIR, ROOT, write_result

__all__ = ["add_split_options", "main", "pipeline_vectors", "split_missing", "split_scores"]

SPLITS = ("catalog", "query", "train", "val_seen")
DISTRACTORS_PER_CLASS = 3  # as `coinvision eval retrieval --distractors`
WEIGHTS = ((0.8, 0.0, 0.2), (0.0, 0.8, 0.2), (0.5, 0.5, 0.0), (0.4, 0.4, 0.2), (0.6, 0.2, 0.2), (0.35, 0.35, 0.3))


def pipeline_vectors(models: Path, split_dir: Path, cache_dir: Path, views: int | None = None) -> dict[str, np.ndarray]:
    """Per split: the pipeline's vectors and labels (``views`` rotated views averaged; None: the folder's own
    number), cached by the embedder file's sha256."""
    digest = hashlib.sha256((models / "embedder.tflite").read_bytes()).hexdigest()[:16]
    cache = cache_dir / f"vectors_{digest}{f'_views{views}' if views else ''}.npz"
    if cache.is_file():
        data = np.load(cache, allow_pickle=False)
        return {k: data[k] for k in data.files}
    from coinvision.sdk import Recognizer
    from coinvision.sdk.evaluation import list_class_folder
    from coinvision.sdk.images import load_image
    from tqdm import tqdm

    recognizer = Recognizer.from_dir(models, runtime="tflite", num_threads=1)
    if views:
        recognizer.crop_params = dataclasses.replace(recognizer.crop_params, embed_rotations=views)
    out: dict[str, np.ndarray] = {}
    for split in SPLITS:
        pairs = list_class_folder(split_dir / split)
        out[split] = np.stack([recognizer.embed(load_image(p)).vector
                               for p, _ in tqdm(pairs, desc=f"{models.name}: {split}", file=sys.stdout)])
        out[f"{split}_labels"] = np.array([label for _, label in pairs])
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def add_split_options(parser: argparse.ArgumentParser) -> None:
    """``--split`` (the release split's folders) and ``--cache`` (the pipeline vectors, per embedder file)."""
    parser.add_argument("--split", type=Path, default=ROOT / "runs" / "split", help="the release split's folders")
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "embedder_pair")


def split_missing(split: Path, prog: str) -> bool:
    """True (and says so on stderr) when ``split`` lacks one of the release split's folders."""
    if all((split / s).is_dir() for s in SPLITS):
        return False
    print(f"{prog}: {split} lacks one of {SPLITS}; make the release split with `make split`", file=sys.stderr)
    return True


def split_scores(vec: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict[str, float]:
    """Per-split vectors scored as the model card scores the release: the held-out classes alone and with the
    training classes' first photos as distractors, the trained classes' held-out photos against that catalog, and
    both query sets pooled."""
    from coinvision.sdk.evaluation import evaluate_retrieval, first_per_class

    idx = np.asarray(first_per_class(list(labels["train"]), DISTRACTORS_PER_CLASS))
    catalog = np.vstack([vec["catalog"], vec["train"][idx]])
    c_labels = list(labels["catalog"]) + list(labels["train"][idx])
    unseen = evaluate_retrieval(vec["query"], list(labels["query"]), vec["catalog"], list(labels["catalog"]))
    full = evaluate_retrieval(vec["query"], list(labels["query"]), catalog, c_labels)
    seen = evaluate_retrieval(vec["val_seen"], list(labels["val_seen"]), catalog, c_labels)
    n_unseen, n_seen = len(labels["query"]), len(labels["val_seen"])
    return {"unseen R@1": unseen.recall_at[1], "unseen class-mean R@1": unseen.class_mean_recall_at_1,
            "unseen R@1 with distractors": full.recall_at[1], "trained R@1": seen.recall_at[1],
            "all R@1": (full.recall_at[1] * n_unseen + seen.recall_at[1] * n_seen) / (n_unseen + n_seen)}


def _score(weights: tuple[float, float, float], parts: list[dict[str, np.ndarray]],
           labels: dict[str, np.ndarray]) -> dict[str, Any]:
    vec = {s: np.concatenate([np.sqrt(w) * p[s] for w, p in zip(weights, parts, strict=True) if w > 0], axis=1)
           for s in SPLITS}
    return {"w trained A": weights[0], "w trained B": weights[1], "w branch A": weights[2],
            "dims": vec["query"].shape[1], **split_scores(vec, labels)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, nargs=2, required=True, metavar=("A", "B"),
                        help="two release folders whose embedders have a branch (A's branch is the one used)")
    add_split_options(parser)
    parser.add_argument("--trained-dims", type=int, default=64, help="length of each vector's trained part")
    parser.add_argument("--views", type=int, default=None,
                        help="rotated views averaged per photo (default: each folder's metadata)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "embedder_pair.json")
    args = parser.parse_args(argv)
    if split_missing(args.split, "bench_embedder_pair"):
        return MISSING_INPUTS_EXIT
    a, b = (pipeline_vectors(m, args.split, args.cache, args.views) for m in args.models)
    labels = {s: a[f"{s}_labels"] for s in SPLITS}
    if any(not np.array_equal(labels[s], b[f"{s}_labels"]) for s in SPLITS):
        print("bench_embedder_pair: the two folders saw different photos; clear the cache", file=sys.stderr)
        return 1
    d = args.trained_dims
    parts = [{s: unit_rows(a[s][:, :d]) for s in SPLITS}, {s: unit_rows(b[s][:, :d]) for s in SPLITS},
             {s: unit_rows(a[s][:, d:]) for s in SPLITS}]
    table = []
    for weights in WEIGHTS:
        row = _score(weights, parts, labels)
        print(" | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
        table.append(row)
    results = {"models": [str(m) for m in args.models], "trained_dims": d, "views": args.views or "metadata",
               "distractors_per_class": DISTRACTORS_PER_CLASS, "photos": {s: len(labels[s]) for s in SPLITS}}
    path = write_result("embedder_pair", results, table, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
