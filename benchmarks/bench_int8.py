"""What each int8 change buys the embedder: parity with PyTorch, size and CPU latency per quantization recipe.

    python -m benchmarks.bench_int8 --quick     # 100 calibration + 100 check photos
    python -m benchmarks.bench_int8 --checkpoint runs/embedder/mnv2_long/best.pt \\
        --calibration runs/split/train --check-images runs/split/query

Every variant is derived from ONE fp32 flatbuffer of the checkpoint with ``tflite_export.quantize_tflite`` (the
function ``coinvision export`` uses), calibrated on photos of TRAINING classes and checked on photos of the
held-out classes (``coinvision data split --materialize runs/split`` lays both out), each photo through the
device pipeline (two-pass segmentation by the embedder's training segmenter, background-removed crop). Figures
come from ``parity.measure_parity``: cosine to PyTorch (mean, min) and the Recall@1 change of a search over the
check photos, against the release targets for int8 (cosine mean >= 0.99, min >= 0.97, drop <= 1 point).
Latency: TFLite with XNNPACK, one image, 1 thread, median of 30 runs after warm-up.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, median_ms, release_checkpoint, write_result

__all__ = ["VARIANTS", "Variant", "run_variants"]

# the embedder's tail: pooled features -> FC head -> L2 normalisation (litert-torch names each op's output tensor
# after the PyTorch module path; the normalisation ops are unnamed children of the Embedder module)
_TAIL = r"global_pool|Sequential_head|Embedder_inner;\d|serving_default_output"
HEAD_REGEX = rf".*({_TAIL}).*"
HEAD_AND_LAST_CONV_REGEX = rf".*(Conv2d_conv_head|{_TAIL}).*"


@dataclass(frozen=True)
class Variant:
    name: str
    quantization: str
    bias_correction: bool = True
    keep_float_regex: str | None = None


VARIANTS = (
    Variant("fp16 (reference tier)", "fp16"),
    Variant("int8 weights only, plain", "int8_dynamic", bias_correction=False),
    Variant("int8 weights only + bias correction", "int8_dynamic"),
    Variant("full int8, plain", "int8_full", bias_correction=False),
    Variant("full int8 + bias correction", "int8_full"),
    Variant("full int8 + bias correction, head float", "int8_full", keep_float_regex=HEAD_REGEX),
    Variant("full int8 + bias correction, last conv + head float", "int8_full",
            keep_float_regex=HEAD_AND_LAST_CONV_REGEX),
    Variant("int8 weights, int16 activations + bias correction", "int16x8"),
)


def run_variants(checkpoint: Path, calibration_dir: Path, check_dir: Path, *, calibration_count: int,
                 check_count: int, variants: tuple[Variant, ...] = VARIANTS, latency_runs: int = 30
                 ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row of figures per variant, plus what they were measured on."""
    import dataclasses

    from coinvision.converters.export_run import embedder_segment_fn
    from coinvision.converters.parity import ParitySet, measure_parity, parity_failures
    from coinvision.converters.photo_inputs import list_photos, model_squares, pick_evenly
    from coinvision.converters.tflite_export import convert_tflite_fp32, export_tflite
    from coinvision.sdk.preprocess import to_model_input
    from coinvision.sdk.recognizer import CropParams
    from coinvision.sdk.runtimes import tflite_predictor
    from coinvision.trainer.torch_runtime import torch_predictor
    from coinvision.trainer.trained_model import load_trained_model

    source = load_trained_model(checkpoint)
    if source.kind != "embedder":
        raise SystemExit(f"{checkpoint} is a {source.kind} checkpoint; this benchmark studies the embedder")
    segment, crops = embedder_segment_fn([source])
    size, margin = source.meta.input.size_px, CropParams.from_metadata(source.meta).crop_margin_frac
    print(f"crops: {crops}", flush=True)
    calib = model_squares("embedder", pick_evenly(list_photos(calibration_dir), calibration_count), calibration_dir,
                          size, segment, crop_margin_frac=margin)
    check = model_squares("embedder", pick_evenly(list_photos(check_dir), check_count), check_dir, size, segment,
                          crop_margin_frac=margin)
    parity_set = ParitySet(check.squares, check.labels, check.sources)
    nhwc = dataclasses.replace(source.meta.input, layout="NHWC")
    calibration = [to_model_input(s, nhwc) for s in calib.squares]
    reference = torch_predictor(source.model, source.meta.input)
    fp32 = convert_tflite_fp32(source.model, size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for v in variants:
            print(f"{v.name} ...", flush=True)
            started = time.perf_counter()
            path = export_tflite(source.model, source.meta, Path(tmp) / f"{len(rows)}.tflite",
                                 quantization=v.quantization, calibration=calibration, fp32_bytes=fp32,
                                 keep_float_regex=v.keep_float_regex, bias_correction=v.bias_correction)
            convert_s = time.perf_counter() - started
            predict = tflite_predictor(path, num_threads=1)
            figures = measure_parity("embedder", reference, predict, parity_set)
            misses = parity_failures("embedder", v.quantization, figures)
            rows.append({
                "variant": v.name,
                "cosine_mean": figures["cosine_mean"],
                "cosine_min": figures["cosine_min"],
                "recall1": figures.get("recall1_candidate"),
                "recall1_drop_points": figures.get("recall1_drop_points"),
                "nn_top1_agreement": figures.get("nn_top1_agreement"),
                "bytes": path.stat().st_size,
                "latency_1t_ms": median_ms(functools.partial(predict, check.squares[0]), latency_runs),
                "quantize_s": convert_s,
                "passes_target": not misses,
                "misses": "; ".join(misses),
                "quantization": v.quantization,
                "bias_correction": v.bias_correction,
                "keep_float_regex": v.keep_float_regex or "",
            })
            r = rows[-1]
            print(f"  cos mean {r['cosine_mean']:.4f} min {r['cosine_min']:.4f} drop {r['recall1_drop_points']} "
                  f"| {r['bytes'] / 1e6:.2f} MB | {r['latency_1t_ms']:.1f} ms | {misses if misses else 'pass'}",
                  flush=True)
    info = {"n_calibration": len(calib.squares), "n_check": len(check.squares), "crops": crops,
            "recall1_pytorch": figures.get("recall1_reference")}
    return rows, info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="embedder best.pt (default: the one models/release was exported from)")
    parser.add_argument("--calibration", type=Path, default=ROOT / "runs" / "split" / "train",
                        help="photos of training classes (default runs/split/train)")
    parser.add_argument("--check-images", type=Path, default=ROOT / "runs" / "split" / "query",
                        help="<class>/<photo> of held-out classes (default runs/split/query)")
    parser.add_argument("--quick", action="store_true", help="100 calibration + 100 check photos")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    args.checkpoint = args.checkpoint or release_checkpoint("embedder") or ROOT / "runs" / "embedder" / "*" / "best.pt"
    for path, fix in ((args.checkpoint, "train one (coinvision train embedder) or pass --checkpoint"),
                      (args.calibration, "run coinvision data split ... --materialize runs/split"),
                      (args.check_images, "run coinvision data split ... --materialize runs/split")):
        if not path.exists():
            print(f"skipped: {path} does not exist; {fix}", file=sys.stderr)
            return 0
    count = 100 if args.quick else 200
    rows, info = run_variants(args.checkpoint, args.calibration, args.check_images, calibration_count=count,
                              check_count=count)
    path = write_result("int8", {"checkpoint": str(args.checkpoint), "calibration": str(args.calibration),
                                 "check_images": str(args.check_images), "count": count, **info}, rows, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
