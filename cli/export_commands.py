"""``coinvision export``: trainer checkpoints -> ONNX / TFLite / Core ML files, ``export.json``, parity check.

Heavy imports (torch, litert-torch, coremltools) happen inside the handler.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["register"]

_EPILOG = """\
files: <kind>.onnx, <kind>.tflite (fp32, the SDK default), <kind>.fp16.tflite, <kind>.int8_dynamic.tflite,
<kind>.int8.tflite (int8_full), <kind>.mlpackage (Core ML fp16) and <kind>.<variant>.mlpackage, each with a
<file>.meta.json sidecar and the same metadata inside the file; export.json lists files, sizes, sha256 and, with
--check, the parity figures against PyTorch. Exit status: 0 ok, 1 a parity target or file check missed, 2 bad input.

example (release):
  coinvision export runs/segmenter/mnv2/best.pt runs/embedder/best.pt --out models/release \\
      --calibration ../shared/data --calibration-count 200 --check --check-images VAL_DIR
"""


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _cmd_export(args: argparse.Namespace) -> int:
    import logging

    if not args.verbose:  # coremltools logs every graph pass at INFO
        logging.getLogger("coremltools").setLevel(logging.WARNING)
    from coinvision.converters.export_run import ExportOptions, run_export
    from coinvision.converters.parity import parse_target_overrides

    options = ExportOptions(
        checkpoints=tuple(args.checkpoints),
        out_dir=args.out,
        formats=_csv(args.formats),
        quantizations=_csv(args.quant),
        coreml_variants=_csv(args.coreml_variants),
        calibration_dir=args.calibration,
        calibration_count=args.calibration_count,
        int8_keep_float_regex=args.int8_keep_float,
        bias_correction=args.bias_correction,
        check=args.check,
        check_images=args.check_images,
        check_count=args.check_count,
        targets=parse_target_overrides(args.target) if args.target else None,
        num_threads=args.threads,
    )
    manifest = run_export(options, report=lambda line: print(line, flush=True))
    print(f"wrote {len(manifest['files'])} file(s) and {args.out / 'export.json'} in {manifest['total_s']:.0f} s")
    for name in manifest["parity_skipped"]:
        print(f"  {name}: parity skipped (Core ML predictions need macOS); spec validated")
    if manifest["failures"]:
        print(f"FAILED: {len(manifest['failures'])} target(s) missed:", file=sys.stderr)
        for failure in manifest["failures"]:
            print(f"  {failure}", file=sys.stderr)
        return 1
    if options.check:
        print("parity: every checked file meets its target")
    return 0


def _cmd_recover_embedder(args: argparse.Namespace) -> int:
    from coinvision.converters.onnx_recovery import recover_embedder

    report = recover_embedder(args.onnx, args.config, args.out)
    print(f"wrote {report.out} (fingerprint {report.fingerprint}) from {args.onnx} (fingerprint "
          f"{report.source_fingerprint or '?'}): {report.convolutions} folded convolutions unfolded; vs ONNX Runtime "
          f"max |diff| {report.max_abs_diff:.2e}, min cosine {report.min_cosine:.6f}")
    return 0


def _cmd_recover_segmenter(args: argparse.Namespace) -> int:
    from coinvision.converters.onnx_recovery import recover_segmenter

    report = recover_segmenter(args.onnx, args.config, args.out)
    print(f"wrote {report.out} (fingerprint {report.fingerprint}) from {args.onnx} (fingerprint "
          f"{report.source_fingerprint or '?'}): {report.convolutions} convolutions; vs ONNX Runtime max |diff| "
          f"{report.max_abs_diff:.2e} on logits up to {report.max_abs_logit:.1f}")
    return 0


def _add_recover(sub: argparse._SubParsersAction, kind: str, func: Callable[[argparse.Namespace], int], *,
                 summary: str, description: str) -> None:
    """``coinvision recover-KIND KIND.onnx [--config] [--out]``."""
    p = sub.add_parser(f"recover-{kind}", help=summary, description=description)
    p.add_argument("onnx", type=Path, metavar=f"{kind.upper()}_ONNX", help=f"e.g. models/release/{kind}.onnx")
    p.add_argument("--config", type=Path, default=Path(f"models/release/training/{kind}.train_config.yaml"),
                   help="the resolved training config it was exported from (default: the release's)")
    p.add_argument("--out", type=Path, default=Path(f"runs/{kind}/recovered/best.pt"), help="checkpoint to write")
    p.set_defaults(func=func)


def register(sub: argparse._SubParsersAction) -> None:
    _add_recover(
        sub, "segmenter", _cmd_recover_segmenter,
        summary="an exported segmenter.onnx -> a trainer checkpoint with the same logits (BatchNorms unfolded)",
        description="Rebuild the training config's U-Net and write the ONNX file's weights into it (every BatchNorm "
        "was folded into its convolution at export), with the post-processing its metadata says, checked against "
        "ONNX Runtime. Fine-tune from it with `coinvision train segmenter --set init_checkpoint=OUT "
        "bn_calibration_samples=320` (its BatchNorms are identities until their statistics are measured on the "
        "training mix) or `freeze_bn=true`.",
    )
    _add_recover(
        sub, "embedder", _cmd_recover_embedder,
        summary="an exported embedder.onnx -> a trainer checkpoint with the same outputs (BatchNorms unfolded)",
        description="Rebuild the training config's embedder and write the ONNX file's weights into it (its "
        "backbone BatchNorms were folded into the convolutions at export), checked against ONNX Runtime. A frozen "
        "branch the file's metadata names (branch_backbone) is rebuilt too, and float16-stored weights are read as "
        "they are. For re-exporting, refitting or benchmarking the shipped embedder when its training checkpoint "
        "is gone.",
    )

    p = sub.add_parser(
        "export",
        help="export trainer checkpoints to ONNX, TFLite and Core ML (+ parity check)",
        description="Export segmenter/embedder checkpoints to ONNX, TFLite (fp32, fp16, int8_dynamic, int8_full) "
        "and Core ML (fp16, w8, palette6, palette8), with metadata in every file and an export.json manifest.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoints", nargs="+", type=Path, metavar="CHECKPOINT",
                   help="trainer checkpoint(s); the kind (segmenter/embedder) is read from each")
    p.add_argument("--out", type=Path, required=True, help="output folder (files + export.json)")
    p.add_argument("--formats", default="onnx,tflite,coreml", help="comma list of onnx,tflite,coreml")
    p.add_argument("--quant", default="fp32,fp16,int8_dynamic,int8_full",
                   help="TFLite quantizations, comma list of fp32,fp16,int8_dynamic,int8_full,int16x8")
    p.add_argument("--coreml-variants", default="fp16", help="comma list of fp16,w8,palette6,palette8")
    p.add_argument("--calibration", type=Path, default=None,
                   help="folder of real photos for int8_full calibration and int8 bias correction "
                   "(recursive; >= 200 for a release)")
    p.add_argument("--calibration-count", type=int, default=200,
                   help="photos to calibrate on, spread evenly over the folder (default 200)")
    p.add_argument("--int8-keep-float", default=None, metavar="REGEX",
                   help="leave ops whose output tensor name matches REGEX in float in int8_full/int16x8")
    p.add_argument("--no-bias-correction", dest="bias_correction", action="store_false",
                   help="skip the int8 bias correction (for comparison; it is on by default with --calibration)")
    p.add_argument("--check", action="store_true", help="compare every file with PyTorch on real photos")
    p.add_argument("--check-images", type=Path, default=None,
                   help="photos for --check (recursive; <class>/<photo> folders add Recall@1 for the embedder)")
    p.add_argument("--check-count", type=int, default=200, help="photos to check on (default 200)")
    p.add_argument("--target", action="append", default=[], metavar="KIND.TIER.FIELD=VALUE",
                   help="override a parity target, e.g. embedder.int8.cosine_min=0.95 (tiers fp32, fp16, int8)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch and the runtimes (default 1)")
    p.set_defaults(func=_cmd_export)
