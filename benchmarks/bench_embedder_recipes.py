"""Embedder recipes side by side on the same split: each row a training run, judged on coin classes it never saw.

Every recipe is the base config plus overrides (``RECIPES``); each trains into ``runs/embedder/recipes/<name>``
(resumable: a rerun continues unfinished runs and only re-scores finished ones), then its ``best.pt`` is scored
with 1 and 4 rotation-averaged views: Recall@1/5 on the unseen classes, per dataset, class-mean, with the
training classes in the catalog as distractors, and Recall@k for k = 1…20 (the CMC curve, plotted per recipe).
The frozen pretrained backbone's PCA (``head_init: pca`` at epoch 0) is the row every recipe must beat.

    python -m benchmarks.bench_embedder_recipes [--recipes arcface_pca triplet ...] [--set epochs=5 ...] [--out J]

Rows of earlier runs in the ``--out`` JSON are kept (a rerun replaces a recipe's row); the frozen start is rescored
every run, so give a run on other data or crops its own ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

OUT_JSON = Path(__file__).parent / "results" / "embedder_recipes.json"
OUT_PNG = Path(__file__).parent / "results" / "embedder_recipes_cmc.png"
BASE_CONFIG = Path("trainer/configs/embedder_lite0.yaml")
CMC_KS = tuple(range(1, 21))

# name -> overrides of the base config; each run's best.pt is scored with 1 and 4 rotated views.
RECIPES: dict[str, dict[str, Any]] = {
    "arcface_pca": {},
    "arcface_mlp_random": {"head_init": "random", "head_hidden_dims": [512], "head_dropout": 0.1},
    "arcface_pca_distill": {"distill_weight": 30.0},
    "arcface_pca_128d": {"embedding_dim": 128},
    "subcenter_arcface_pca": {"loss": "subcenter_arcface"},
    "triplet_semihard": {"loss": "triplet", "sampler": "m_per_class"},
    "multi_similarity": {"loss": "multi_similarity", "sampler": "m_per_class"},
    "proxy_anchor": {"loss": "proxy_anchor", "lr_head": 0.01},
    "softmax_center": {"loss": "softmax_center"},
}


def _score(feed: Any, model: Any, data: Any, rotations: int) -> dict[str, Any]:
    from coinvision.sdk.evaluation import evaluate_retrieval

    emb = {s: feed.embed(model, s, rotations=rotations) for s in ("query", "catalog", "distractors")}
    q_labels, c_labels = [s.class_key for s in data.query], [s.class_key for s in data.catalog]
    unseen = evaluate_retrieval(emb["query"], q_labels, emb["catalog"], c_labels, ks=CMC_KS,
                                query_groups=[s.dataset for s in data.query])
    full = evaluate_retrieval(emb["query"], q_labels, np.vstack([emb["catalog"], emb["distractors"]]),
                              c_labels + [s.class_key for s in data.distractors])
    return {
        "recall@1": unseen.recall_at[1], "recall@5": unseen.recall_at[5], "map@r": unseen.map_at_r,
        "class_mean_recall@1": unseen.class_mean_recall_at_1,
        **{f"recall@1[{g}]": v for g, v in unseen.recall_at_1_by_group.items()},
        "full_recall@1": full.recall_at[1], "full_recall@5": full.recall_at[5],
        "cmc": [unseen.recall_at[k] for k in CMC_KS],
    }


def run(names: list[str], overrides: dict[str, Any], root: Path, out_json: Path = OUT_JSON) -> list[dict[str, Any]]:
    import torch
    from coinvision.trainer.config_io import resolve_config
    from coinvision.trainer.emb_config import EmbedderConfig
    from coinvision.trainer.emb_data import load_embedding_data
    from coinvision.trainer.emb_losses import build_loss
    from coinvision.trainer.emb_model import build_embedder, load_embedder
    from coinvision.trainer.emb_train import init_head_from_pca, make_feed, train_embedder

    base = resolve_config(EmbedderConfig, BASE_CONFIG, overrides)
    torch.set_num_threads(base.num_threads)
    device = torch.device("cpu")
    data = load_embedding_data(base, progress=False)
    rows = []
    previous = {r["recipe"]: r for r in json.loads(out_json.read_text())["rows"]} if out_json.is_file() else {}
    for name in ["frozen_pca_start", *names]:
        started = time.time()
        if name == "frozen_pca_start":  # the model every PCA recipe starts from: frozen backbone + PCA head
            cfg, recipe, epoch = base, {"head_init": "pca", "epochs": 0}, 0
            torch.manual_seed(cfg.seed)
            model = build_embedder(cfg)
            feed = make_feed(cfg, data, model, device, progress=False)
            init_head_from_pca(model, build_loss(cfg, len(data.class_keys)), feed.pca_features(model.backbone),
                               [data.label_of(s) for s in data.train], cfg)
        else:
            recipe = RECIPES[name]
            cfg = resolve_config(EmbedderConfig, BASE_CONFIG, {**overrides, **recipe, "out_dir": str(root / name)})
            model, _, ckpt = load_embedder(train_embedder(cfg, resume=True, data=data, progress=False))
            feed, epoch = make_feed(cfg, data, model, device, progress=False), ckpt.epoch
        row = {"recipe": name, "overrides": recipe, "best_epoch": epoch,
               "embedding_dim": cfg.embedding_dim, "pack_bytes_per_vector_int8": cfg.embedding_dim + 8}
        for rotations in (1, 4):
            row[f"rot{rotations}"] = _score(feed, model, data, rotations)
        row["seconds"] = round(time.time() - started, 1)
        rows.append(row)
        previous[name] = row
        r1, r4 = row["rot1"], row["rot4"]
        print(f"{name:24s} epoch {epoch:2d}: R@1 {r1['recall@1']:.3f} (4 rot {r4['recall@1']:.3f})  "
              f"R@5 {r4['recall@5']:.3f}  class-mean {r4['class_mean_recall@1']:.3f}  "
              f"with distractors {r4['full_recall@1']:.3f}  " +
              "  ".join(f"{k} {v:.3f}" for k, v in r4.items() if k.startswith("recall@1[")), flush=True)
        _write(list(previous.values()), overrides, out_json)
    return rows


def _write(rows: list[dict[str, Any]], overrides: dict[str, Any], out_json: Path) -> None:
    from coinvision.trainer.plotting import png_figure

    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps({"command": "python -m benchmarks.bench_embedder_recipes",
                                    "base_config": str(BASE_CONFIG), "overrides": overrides,
                                    "rows": rows}, indent=2))
    with png_figure(_png_of(out_json), figsize=(8, 5)) as (_, ax):
        for row in rows:
            ax.plot(CMC_KS, row["rot4"]["cmc"], marker="o", markersize=3,
                    label=f"{row['recipe']} (R@1 {row['rot4']['recall@1']:.3f})")
        ax.set(title="Recall@k on unseen coin classes (4 rotations averaged)", xlabel="k", ylabel="Recall@k",
               xticks=list(CMC_KS))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)


def _png_of(out_json: Path) -> Path:
    return OUT_PNG if out_json == OUT_JSON else out_json.with_name(out_json.stem + "_cmc.png")


def main(argv: list[str] | None = None) -> int:
    from coinvision.trainer.config_io import parse_overrides

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every recipe")
    parser.add_argument("--root", type=Path, default=Path("runs/embedder/recipes"))
    parser.add_argument("--out", type=Path, default=OUT_JSON, help="results JSON (the CMC plot: *_cmc.png beside it)")
    args = parser.parse_args(argv)
    run(args.recipes, parse_overrides(args.set), args.root, args.out)
    print(f"wrote {args.out} and {_png_of(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
