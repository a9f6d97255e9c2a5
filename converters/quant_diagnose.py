"""Where does a quantized TFLite model lose the fp32 model? Per-tensor error, layer by layer, on real inputs.

    python -m coinvision.converters.quant_diagnose runs/export/embedder.tflite runs/export/embedder.int8.tflite \\
        --images runs/crop_cache/seg-ddb32f2b86945bde_160px_m0.05 --count 32 --plot runs/int8_layers.png

Both files come from the same fp32 flatbuffer, so the quantizer keeps every activation tensor's name;
ai-edge-quantizer's ``model_validator.compare_model`` dequantizes each tensor of the quantized model and compares
it with the fp32 tensor of the same name (cosine similarity and SNR, averaged over the images). This module puts
the results in execution order and prints where the SNR drops most, so the fix (keep those ops float, change the
activation, more calibration) is aimed, not guessed.
``--images`` holds squares the model sees (letterboxed to its input size): the embedder's background-removed
crops (the trainer's crop cache) or any photos for the segmenter.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from coinvision.converters.photo_inputs import list_photos, pick_evenly
from coinvision.converters.tflite_export import compact_name, compact_tensor_names, signature_input_name
from coinvision.sdk.errors import CoinVisionError, ConversionError
from coinvision.sdk.images import load_image
from coinvision.sdk.model_meta import ModelMetadata
from coinvision.sdk.preprocess import letterbox, to_model_input

__all__ = ["TensorError", "tensor_errors"]


@dataclass(frozen=True)
class TensorError:
    order: int  # position of the producing op in execution order
    op: str
    name: str
    cosine_mean: float
    snr_db: float  # 10 log10(signal power / error power); the power ratio is averaged over the images


def _ops_in_order(model_bytes: bytes) -> list[tuple[int, str, str, tuple[int, ...]]]:
    """``(order, op type, output tensor name, shape)`` of every op of a TFLite model."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # without the default delegate every op keeps its own output tensor (XNNPACK fuses them away)
    interpreter = Interpreter(model_content=model_bytes,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    return [(i, op["op_name"], details[int(t)]["name"], tuple(details[int(t)]["shape"]))
            for i, op in enumerate(interpreter._get_ops_details()) for t in op["outputs"] if int(t) in details]


def tensor_errors(fp32_path: str | Path, quant_path: str | Path, inputs: Sequence[np.ndarray]) -> list[TensorError]:
    """Error of every activation the two models share, in the fp32 model's execution order."""
    from ai_edge_quantizer import model_validator
    from ai_edge_quantizer.utils.validation_utils import ValidationErrorMetric

    if not inputs:
        raise ConversionError("no inputs to compare on; pass a folder of images")
    fp32_bytes, quant_bytes = Path(fp32_path).read_bytes(), Path(quant_path).read_bytes()
    produced = _ops_in_order(fp32_bytes)
    quant_shapes = {name: shape for _, _, name, shape in _ops_in_order(quant_bytes)}
    readable: dict[str, str] = {}
    if sum(name in quant_shapes for _, _, name, _ in produced) < len(produced) / 2:
        # a quantized export names its inner tensors by digest (tflite_export.compact_tensor_names): compare with
        # the fp32 model named the same way, report the fp32 names
        readable = {compact_name(name): name for _, _, name, _ in produced}
        fp32_bytes = compact_tensor_names(fp32_bytes)
        produced = _ops_in_order(fp32_bytes)
    shared = [(i, op, name) for i, op, name, shape in produced if quant_shapes.get(name) == shape]
    if len(shared) < len(produced) / 2:  # generic names ("serving_default_...") match in any two models
        raise ConversionError(f"{quant_path} shares no tensor names with {fp32_path} (only {len(shared)} of "
                              f"{len(produced)}); were both exported from the same fp32 flatbuffer?")
    signature, input_name = signature_input_name(fp32_bytes)
    result = model_validator.compare_model(
        fp32_bytes, quant_bytes, {signature: [{input_name: np.asarray(x, np.float32)} for x in inputs]},
        error_metrics=[ValidationErrorMetric.COSINE_SIMILARITY, ValidationErrorMetric.SNR], use_xnnpack=False,
        num_threads=1,
    ).get_all_tensor_results()
    return [TensorError(order, op, readable.get(name, name), float(result[name]["cosine_similarity"]),
                        10.0 * float(np.log10(max(result[name]["snr"], 1e-12))))  # the validator's SNR is a ratio
            for order, op, name in shared if name in result]


def _short(name: str, width: int = 60) -> str:
    """The module path's last two parts (block + layer) of a litert-torch tensor name."""
    tail = "/".join(name.split(";")[0].split("/")[-2:]) or name
    return tail if len(tail) <= width else "…" + tail[-width:]


def _plot(errors: list[TensorError], out_png: Path, title: str) -> None:
    from coinvision.trainer.plotting import png_figure

    with png_figure(out_png, figsize=(9, 3.8), dpi=120) as (_, ax):
        ax.plot([e.order for e in errors], [e.snr_db for e in errors], ".-")
        ax.set_xlabel("op (execution order)")
        ax.set_ylabel("SNR vs fp32 (dB, higher is closer)")
        ax.set_title(title)
        ax.grid(alpha=0.3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fp32", type=Path, help="fp32 .tflite (its .meta.json sidecar gives the input spec)")
    parser.add_argument("quantized", type=Path, help="quantized .tflite exported from the same fp32 model")
    parser.add_argument("--images", type=Path, required=True, help="folder of model-input squares or photos")
    parser.add_argument("--count", type=int, default=32, help="images to compare on (spread over the folder)")
    parser.add_argument("--top", type=int, default=12, help="how many of the largest error jumps to print")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of SNR per layer")
    args = parser.parse_args(argv)
    try:
        meta = ModelMetadata.read_sidecar(args.fp32)
        size = meta.input.size_px
        paths = pick_evenly(list_photos(args.images, what="--images folder"), args.count)
        inputs = [to_model_input(letterbox(load_image(p), size)[0], meta.input) for p in paths]
        errors = tensor_errors(args.fp32, args.quantized, inputs)
    except CoinVisionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(errors)} tensors compared on {len(inputs)} images; final output: cosine mean "
          f"{errors[-1].cosine_mean:.4f}, SNR {errors[-1].snr_db:.1f} dB")
    drops = sorted(range(1, len(errors)), key=lambda i: errors[i].snr_db - errors[i - 1].snr_db)
    print("largest SNR drops (op # / type / tensor): SNR before -> after, cosine mean")
    for i in sorted(drops[: args.top]):
        e, before = errors[i], errors[i - 1]
        print(f"  {e.order:4d} {e.op:18s} {_short(e.name):60s} {before.snr_db:6.1f} -> {e.snr_db:6.1f} dB  "
              f"cos {e.cosine_mean:.4f}")
    if args.plot:
        _plot(errors, args.plot, f"{args.quantized.name} vs {args.fp32.name}")
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
