"""Where does a quantized TFLite model lose the fp32 model? Per-tensor error, layer by layer, on real inputs.

    python -m coinvision.converters.quant_diagnose runs/export/embedder.tflite runs/export/embedder.int8.tflite \\
        --images runs/crop_cache/seg-ddb32f2b86945bde_160px_m0.05 --count 32 --plot runs/int8_layers.png

Both files come from the same fp32 flatbuffer, so the quantizer keeps every activation tensor's name: each tensor
of the quantized model is dequantized with its own scale/zero point and compared with the fp32 tensor of the
same name (cosine and relative RMS error over the images). Printed: the tensors in execution order where the
error jumps most, so the fix (keep those ops float, change the activation, more calibration) is aimed, not
guessed. ``--images`` holds squares the model sees (letterboxed to its input size): the embedder's
background-removed crops (the trainer's crop cache) or any photos for the segmenter.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from coinvision.converters.photo_inputs import list_photos, pick_evenly
from coinvision.sdk.errors import CoinVisionError, ConversionError
from coinvision.sdk.imageio import load_image
from coinvision.sdk.model_meta import ModelMetadata
from coinvision.sdk.preprocess import letterbox, to_model_input
from coinvision.sdk.runtimes import dequantize_tensor, quantize_tensor

__all__ = ["TensorError", "tensor_errors"]


@dataclass(frozen=True)
class TensorError:
    order: int  # position of the producing op in execution order
    op: str
    name: str
    cosine_mean: float
    cosine_min: float
    rel_rmse: float  # RMS(quantized - fp32) / RMS(fp32)


def _interpreter(path: Path):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # without the default delegate every op keeps its own output tensor (XNNPACK fuses them away)
    interpreter = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    return interpreter


def _feed(interpreter, x: np.ndarray) -> None:
    inp = interpreter.get_input_details()[0]
    interpreter.set_tensor(inp["index"], quantize_tensor(x, inp))
    interpreter.invoke()


def tensor_errors(fp32_path: str | Path, quant_path: str | Path, inputs: Sequence[np.ndarray]) -> list[TensorError]:
    """Error of every activation the two models share, in the fp32 model's execution order."""
    if not inputs:
        raise ConversionError("no inputs to compare on; pass a folder of images")
    ref, got = _interpreter(Path(fp32_path)), _interpreter(Path(quant_path))
    got_by_name = {d["name"]: d for d in got.get_tensor_details()}
    ref_details = {d["index"]: d for d in ref.get_tensor_details()}
    produced = [(i, op["op_name"], ref_details[int(t)]) for i, op in enumerate(ref._get_ops_details())
                for t in op["outputs"] if int(t) in ref_details]
    shared = [(i, op, d, got_by_name[d["name"]]) for i, op, d in produced
              if d["name"] in got_by_name and list(got_by_name[d["name"]]["shape"]) == list(d["shape"])]
    if len(shared) < len(produced) / 2:  # generic names ("serving_default_...") match in any two models
        raise ConversionError(f"{quant_path} shares no tensor names with {fp32_path} (only {len(shared)} of "
                              f"{len(produced)}); were both exported from the same fp32 flatbuffer?")
    cos: dict[str, list[float]] = {d["name"]: [] for _, _, d, _ in shared}
    err2: dict[str, float] = dict.fromkeys(cos, 0.0)
    ref2: dict[str, float] = dict.fromkeys(cos, 0.0)
    for x in inputs:
        _feed(ref, x)
        _feed(got, x)
        for _, _, d_ref, d_got in shared:
            a = ref.get_tensor(d_ref["index"]).astype(np.float64).ravel()
            b = dequantize_tensor(got.get_tensor(d_got["index"]), d_got).astype(np.float64).ravel()
            denom = np.linalg.norm(a) * np.linalg.norm(b)
            cos[d_ref["name"]].append(float(a @ b / denom) if denom > 0 else 1.0)
            err2[d_ref["name"]] += float(np.sum((a - b) ** 2))
            ref2[d_ref["name"]] += float(np.sum(a**2))
    return [
        TensorError(order, op, d["name"], float(np.mean(cos[d["name"]])), float(np.min(cos[d["name"]])),
                    float(np.sqrt(err2[d["name"]] / ref2[d["name"]])) if ref2[d["name"]] > 0 else 0.0)
        for order, op, d, _ in shared if cos[d["name"]]
    ]


def _short(name: str, width: int = 60) -> str:
    """The module path's last two parts (block + layer) of a litert-torch tensor name."""
    tail = "/".join(name.split(";")[0].split("/")[-2:]) or name
    return tail if len(tail) <= width else "…" + tail[-width:]


def _plot(errors: list[TensorError], out_png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.8))
    ax.plot([e.order for e in errors], [e.cosine_mean for e in errors], ".-", label="cosine mean")
    ax.plot([e.order for e in errors], [e.cosine_min for e in errors], ".-", alpha=0.6, label="cosine min")
    ax.set_xlabel("op (execution order)")
    ax.set_ylabel("cosine vs fp32")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fp32", type=Path, help="fp32 .tflite (its .meta.json sidecar gives the input spec)")
    parser.add_argument("quantized", type=Path, help="quantized .tflite exported from the same fp32 model")
    parser.add_argument("--images", type=Path, required=True, help="folder of model-input squares or photos")
    parser.add_argument("--count", type=int, default=32, help="images to compare on (spread over the folder)")
    parser.add_argument("--top", type=int, default=12, help="how many of the largest error jumps to print")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of cosine per layer")
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
          f"{errors[-1].cosine_mean:.4f}, min {errors[-1].cosine_min:.4f}, rel RMSE {errors[-1].rel_rmse:.4f}")
    jumps = sorted(range(1, len(errors)), key=lambda i: errors[i].rel_rmse - errors[i - 1].rel_rmse, reverse=True)
    print("largest relative-RMSE increases (op # / type / tensor): rel RMSE before -> after, cosine mean")
    for i in sorted(jumps[: args.top]):
        e, before = errors[i], errors[i - 1]
        print(f"  {e.order:4d} {e.op:18s} {_short(e.name):60s} {before.rel_rmse:.4f} -> {e.rel_rmse:.4f}  "
              f"cos {e.cosine_mean:.4f}")
    if args.plot:
        _plot(errors, args.plot, f"{args.quantized.name} vs {args.fp32.name}")
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
