"""The untrained start: how well do a pretrained backbone's pooled features find coins never trained on?

Fine-tuning must beat this, on the same unseen classes, or it is forgetting rather than learning. For each
backbone (the embedder config's, plus ``--backbone NAME=WEIGHTS`` extras) this embeds the trainer's cached
crops with the frozen backbone and reports Recall@1 (per dataset, class-mean, with the training classes as
distractors) for the raw pooled features and for their PCA to ``embedding_dim`` (fitted on training crops),
each with 1, 4 and 8 rotation-averaged views (``embed_samples``: the SDK's ``rotation_views``).

    python -m benchmarks.bench_embedder_frozen --config trainer/configs/embedder_lite0.yaml \\
        [--backbone mobilenetv2_100=runs/pretrained/mobilenetv2_100_imagenet.pth]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

OUT = Path(__file__).parent / "results" / "embedder_frozen.json"


def _metrics(query: np.ndarray, catalog: np.ndarray, distractors: np.ndarray, data: Any) -> dict[str, float]:
    from coinvision.sdk.evaluation import evaluate_retrieval

    q_labels, c_labels = [s.class_key for s in data.query], [s.class_key for s in data.catalog]
    unseen = evaluate_retrieval(query, q_labels, catalog, c_labels, query_groups=[s.dataset for s in data.query])
    full = evaluate_retrieval(query, q_labels, np.vstack([catalog, distractors]),
                              c_labels + [s.class_key for s in data.distractors])
    return {**{k: round(v, 4) for k, v in unseen.as_row().items()}, "full_recall@1": round(full.recall_at[1], 4),
            "full_recall@5": round(full.recall_at[5], 4)}


def run(config: Path, extra_backbones: dict[str, str], rotations: tuple[int, ...]) -> list[dict[str, Any]]:
    import torch
    from coinvision.trainer.config_io import resolve_config
    from coinvision.trainer.emb_config import EmbedderConfig
    from coinvision.trainer.emb_data import load_embedding_data
    from coinvision.trainer.emb_losses import build_loss
    from coinvision.trainer.emb_model import build_embedder
    from coinvision.trainer.emb_train import embed_samples, init_head_from_pca

    cfg = resolve_config(EmbedderConfig, config, {})
    torch.set_num_threads(cfg.num_threads)
    data = load_embedding_data(cfg, progress=False)
    device = torch.device("cpu")
    labels = [data.label_of(s) for s in data.train]
    rows = []
    for name, weights in {cfg.backbone: cfg.pretrained_path, **extra_backbones}.items():
        # the embedder as head_init: pca starts it: frozen backbone + linear head at the PCA of its features
        bcfg = replace(cfg, backbone=name, pretrained_path=weights, pad_type="same" if "mobilenetv2" in name else "",
                       head_hidden_dims=(), head_init="pca")
        model = build_embedder(bcfg).eval()
        features = embed_samples(model.backbone, data.train, bcfg, device, rotations=1, unit=False)
        init_head_from_pca(model, build_loss(bcfg, len(data.class_keys)), torch.from_numpy(features), labels, bcfg)
        for n_rot in rotations:
            for kind, net in ((f"pooled {model.backbone.num_features}-d", model.backbone),
                              (f"PCA {cfg.embedding_dim}-d", model)):
                emb = [embed_samples(net, getattr(data, split), bcfg, device, rotations=n_rot)
                       for split in ("query", "catalog", "distractors")]
                row = {"backbone": name, "features": kind, "rotations": n_rot, **_metrics(*emb, data)}
                rows.append(row)
                print(f"{name:24s} {kind:16s} rot {n_rot}: R@1 {row['recall@1']:.3f}  R@5 {row['recall@5']:.3f}  "
                      f"class-mean R@1 {row['class_mean_recall@1']:.3f}  with distractors R@1 "
                      f"{row['full_recall@1']:.3f}  " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()
                                                                  if k.startswith("recall@1[")), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("trainer/configs/embedder_lite0.yaml"))
    parser.add_argument("--backbone", nargs="*", default=[], metavar="NAME=WEIGHTS",
                        help="more timm backbones with local weights to compare")
    parser.add_argument("--rotations", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    extra = dict(item.split("=", 1) for item in args.backbone)
    rows = run(args.config, extra, tuple(args.rotations))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.bench_embedder_frozen " + " ".join(argv or [])
    args.out.write_text(json.dumps({"command": command.strip(), "config": str(args.config), "rows": rows}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
