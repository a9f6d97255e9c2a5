"""Which frozen EfficientNet-Lite0 features the embedder's branch should carry (issue 12, no training).

The shipped embedder is the trained v1 embedder beside a frozen ImageNet Lite0 branch whose global-AVERAGE-pooled
1280-d features go through a half-whitened PCA (``trainer/emb_branch.py``). Instance retrieval usually prefers
other read-outs of the same frozen network: generalized-mean (GeM, p = 3) pooling, max pooling, the last stages'
maps, a larger input. This benchmark measures them all on the SAME crops (the shipped pipeline's segmenter and
crop, TFLite int8), 4 rotated views per photo, without training anything:

1. **Selection, training classes only** (the branch is never trained, so these classes are as new to it as the
   held-out ones): the 132 training classes split in two halves by class; the PCA is fitted on one half's photos and
   the other half is searched (its first 3 photos per class the catalog, the rest queries), then the other way
   round. A variant is chosen by this mean Recall@1 of the branch alone — the held-out sets below play no part.
2. **Report, held-out classes**: each variant's PCA fitted on all training photos (as ``fit_branch`` does), alone
   and beside the shipped v1 vector (the first 64 values of the shipped embedding) at each `--weights`, scored as
   ``coinvision eval retrieval`` scores the release (34 unseen classes, with and without the training classes'
   first 3 photos as distractors; the trained classes' held-out photos against that full catalog).

    python -m benchmarks.bench_branch_features       # ~15 min on 2 cores; features cached in runs/branch_features/

Views as the SDK runs them: every view gets its own branch vector (PCA per view); the shipped model averages 2
views (0°, 180°), so the report averages those two of the four.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_embedder_ensemble import lite0_backbone, unit_rows
from benchmarks.bench_embedder_pair import split_scores
from benchmarks.common import MISSING_INPUTS_EXIT, RESULTS_DIR, ROOT, seed_everything, write_result

__all__ = ["main"]

SPLITS = ("catalog", "query", "train", "val_seen")
DISTRACTORS_PER_CLASS = 3  # as `coinvision eval retrieval --distractors`
VIEWS = 4
SHIPPED_VIEWS = (0, 2)  # 0° and 180° of the 4: the release's embed_rotations 2
GEM_P = 3.0
# read-outs computed per view: (name, feature map, pooling)
READOUTS = ("head_avg", "head_gem", "head_max", "stage6_avg", "stage5_avg", "head224_avg", "head224_gem")


def _readouts(lite: Any, x: Any) -> dict[str, Any]:
    """Every read-out of a batch of views (torch, NCHW, Lite0-normalised)."""
    import torch
    import torch.nn.functional as F

    def head_and_stages(inp: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = lite.bn1(lite.conv_stem(inp))
        stages = []
        for block in lite.blocks:
            h = block(h)
            stages.append(h)
        return lite.bn2(lite.conv_head(h)), stages

    def gem(m: torch.Tensor) -> torch.Tensor:
        return m.clamp(min=1e-6).pow(GEM_P).mean(dim=(2, 3)).pow(1.0 / GEM_P)

    head, stages = head_and_stages(x)
    head224, _ = head_and_stages(F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False))
    return {"head_avg": head.mean(dim=(2, 3)), "head_gem": gem(head), "head_max": head.amax(dim=(2, 3)),
            "stage6_avg": stages[6].mean(dim=(2, 3)), "stage5_avg": stages[5].mean(dim=(2, 3)),
            "head224_avg": head224.mean(dim=(2, 3)), "head224_gem": gem(head224)}


def _features(split_dir: Path, cache: Path, models: Path) -> dict[str, dict[str, np.ndarray]]:
    """Per split: the shipped vectors, every read-out per view ``(n, VIEWS, d)`` (float16), labels (cached)."""
    keys = ("shipped", "labels", *READOUTS)
    if cache.is_file():
        data = np.load(cache, allow_pickle=False)
        return {s: {k: data[f"{s}_{k}"] for k in keys} for s in SPLITS}
    import torch
    from coinvision.sdk import Recognizer
    from coinvision.sdk.evaluation import list_class_folder
    from coinvision.sdk.images import load_image
    from coinvision.sdk.preprocess import rotation_views, to_model_input
    from tqdm import tqdm

    recognizer = Recognizer.from_dir(models, runtime="tflite", num_threads=1)
    lite, lite_spec = lite0_backbone(recognizer.embedder_meta.input.size_px)
    out: dict[str, dict[str, np.ndarray]] = {}
    for split in SPLITS:
        pairs = list_class_folder(split_dir / split)
        shipped, per_view = [], {k: [] for k in READOUTS}
        for path, _ in tqdm(pairs, desc=f"{split}: shipped + lite0 read-outs", file=sys.stdout):
            emb = recognizer.embed(load_image(path))
            x = torch.from_numpy(np.concatenate([to_model_input(v, lite_spec) for v in
                                                 rotation_views(emb.crop, VIEWS, fill_value=0)]))
            with torch.no_grad():
                for k, v in _readouts(lite, x).items():
                    per_view[k].append(v.numpy().astype(np.float16))
            shipped.append(emb.vector)
        out[split] = {"shipped": np.stack(shipped), "labels": np.array([label for _, label in pairs]),
                      **{k: np.stack(v) for k, v in per_view.items()}}
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **{f"{s}_{k}": v for s, d in out.items() for k, v in d.items()})
    return out


def _branch(fit_rows: np.ndarray, dims: int) -> Callable[[np.ndarray], np.ndarray]:
    """``FrozenBranch`` in numpy: unit features -> minus mean -> half-whitened PCA -> unit, per view; averaged over
    the given views and re-normalised, as the SDK averages."""
    from coinvision.trainer.emb_branch import whitened_pca

    mean, proj = whitened_pca(unit_rows(fit_rows.reshape(-1, fit_rows.shape[-1]).astype(np.float64)), dims)

    def apply(per_view: np.ndarray, views: tuple[int, ...] = SHIPPED_VIEWS) -> np.ndarray:
        v = unit_rows((unit_rows(per_view[:, list(views)].astype(np.float64)) - mean) @ proj)
        return unit_rows(v.mean(axis=1))

    return apply


def _variant(feats: dict[str, np.ndarray], name: str) -> np.ndarray:
    """A variant's per-view rows: one read-out, or unit read-outs concatenated with ``+``."""
    parts = name.split("+")
    if len(parts) == 1:
        return feats[name].astype(np.float32)
    return np.concatenate([unit_rows(feats[p].astype(np.float32)) for p in parts], axis=-1)


def _select_score(train: dict[str, np.ndarray], name: str, dims: int) -> float:
    """Mean Recall@1 of the branch alone over the two class halves of the training split (fit on one, search
    the other)."""
    from coinvision.sdk.evaluation import evaluate_retrieval, first_per_class

    labels = train["labels"]
    classes = np.unique(labels)
    rng = np.random.default_rng(0)
    half = set(rng.permutation(classes)[: len(classes) // 2])
    in_a = np.array([c in half for c in labels])
    rows = _variant(train, name)
    scores = []
    for fit_mask in (in_a, ~in_a):
        apply = _branch(rows[fit_mask], dims)
        search = np.flatnonzero(~fit_mask)
        vectors, lab = apply(rows[search]), labels[search]
        catalog = np.zeros(len(search), bool)
        catalog[first_per_class(list(lab), DISTRACTORS_PER_CLASS)] = True
        m = evaluate_retrieval(vectors[~catalog], list(lab[~catalog]), vectors[catalog], list(lab[catalog]))
        scores.append(m.recall_at[1])
    return float(np.mean(scores))


def _report(feats: dict[str, dict[str, np.ndarray]], name: str, dims: int,
            weights: list[float]) -> list[dict[str, Any]]:
    """One row per weight: the branch alone and beside the shipped trained vector (its PCA fitted once)."""
    apply = _branch(_variant(feats["train"], name), dims)
    branch = {s: apply(_variant(feats[s], name)) for s in SPLITS}
    trained = {s: unit_rows(feats[s]["shipped"][:, :64].astype(np.float64)) for s in SPLITS}
    labels = {s: feats[s]["labels"] for s in SPLITS}
    alone = split_scores(branch, labels)
    rows = []
    for weight in weights:
        combined = {s: np.concatenate([np.sqrt(1 - weight) * trained[s], np.sqrt(weight) * branch[s]], axis=1)
                    for s in SPLITS}
        row: dict[str, Any] = {"branch read-out": name, "dims": dims, "branch weight": weight}
        for tag, scores in (("branch alone", alone), ("v1 + branch", split_scores(combined, labels))):
            row.update({f"{tag} R@1": scores["unseen R@1"], f"{tag} class-mean R@1": scores["unseen class-mean R@1"],
                        f"{tag} R@1 with distractors": scores["unseen R@1 with distractors"],
                        f"{tag} trained R@1": scores["trained R@1"]})
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", type=Path, default=ROOT / "runs" / "split", help="the release split's folders")
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "branch_features" / "features.npz")
    parser.add_argument("--models", type=Path, default=ROOT / "models" / "release")
    parser.add_argument("--dims", type=int, default=64)
    parser.add_argument("--weights", type=float, nargs="+", default=[0.2, 0.3, 0.4],
                        help="the branch's shares of the cosine to report (shipped 0.2)")
    parser.add_argument("--variants", nargs="+", default=[*READOUTS, "head_gem+stage6_avg", "head_avg+stage6_avg",
                                                          "head224_gem+stage6_avg"])
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "embedder_branch_features.json")
    args = parser.parse_args(argv)
    if not all((args.split / s).is_dir() for s in SPLITS):
        print(f"bench_branch_features: {args.split} lacks one of {SPLITS}; make the release split with "
              "`make split` (README)", file=sys.stderr)
        return MISSING_INPUTS_EXIT
    seed_everything(0)
    feats = _features(args.split, args.cache, args.models)
    table = []
    for name in args.variants:
        selection = _select_score(feats["train"], name, args.dims)
        for report in _report(feats, name, args.dims, args.weights):
            row = {"selection R@1 (training-class halves)": selection, **report}
            print(" | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
                  flush=True)
            table.append(row)
    best = max(table, key=lambda r: r["selection R@1 (training-class halves)"])
    results = {"dims": args.dims, "weights": args.weights, "views_fit": VIEWS, "views_searched": list(SHIPPED_VIEWS),
               "gem_p": GEM_P, "selected": best["branch read-out"],
               "photos": {s: len(feats[s]["labels"]) for s in SPLITS}}
    path = write_result("embedder_branch_features", results, table, args.out)
    print(f"selected by the training-class halves: {best['branch read-out']}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
