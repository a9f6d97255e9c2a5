"""An ONNX file with its weights STORED in fewer bytes and computed in float32: the same float32 kernels.

Two forms (the metadata's ``quantization``):

- ``fp16_weights``: every float32 initializer becomes a float16 initializer plus a ``Cast`` back to float32 at the
  top of the graph (half the bytes; weights rounded to about 3 decimal digits).
- ``int8_weights``: every weight tensor of at least 2 dimensions and ``INT8_MIN_VALUES`` values becomes int8 with
  one symmetric scale per output channel (axis 0), restored by ``Cast`` + ``Mul``; the other initializers take the
  float16 form (about a quarter of the bytes).

ONNX Runtime (Python, Java, web) folds those constant subgraphs into float32 constants when the session is
created, so the graph runs exactly the float32 kernels it ran before: only the weights are rounded. Converting
the graph's compute to float16 (``onnxconverter-common``) would need float16 CPU kernels that ONNX Runtime does
not have on x86, and ONNX Runtime's own int8 forms (``QLinearConv``, ``ConvInteger``) quantize the activations
too; so the restore-at-load forms are written here.

    python -m coinvision.converters.onnx_weights models/release/segmenter.onnx runs/fp16/segmenter.onnx \\
        --check-images runs/split/query [--form int8_weights] [--models models/release]

The check compares the new file with the float32 file it came from (not with PyTorch: the carried-over release
files have no checkpoint) on real photos, held to the form's parity tier (fp16, int8), and writes the figures
beside the file (``<file>.parity.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
from coinvision.converters.metadata import embed_onnx_metadata
from coinvision.converters.parity import ParitySet, check_parity
from coinvision.converters.photo_inputs import list_photos, model_squares, pick_evenly
from coinvision.sdk.errors import CoinVisionError, ConversionError
from coinvision.sdk.model_meta import ModelMetadata
from coinvision.sdk.recognizer import CropParams

__all__ = ["FORMS", "FP16_WEIGHTS", "INT8_MIN_VALUES", "INT8_WEIGHTS", "check_stored_weights",
           "store_weights"]

log = logging.getLogger(__name__)

FP16_WEIGHTS = "fp16_weights"
INT8_WEIGHTS = "int8_weights"
INT8_MIN_VALUES = 1024  # smaller tensors (biases, norms, depthwise kernels of few channels) stay float16
_CAST_SUFFIX = "__fp16"
_INT8_SUFFIX = "__int8"


# form (the metadata's ``quantization``; parity.QUANTIZATION_TIER holds each to its tier) -> file-name infix:
# <kind>.<infix>.onnx
FORMS = {FP16_WEIGHTS: "fp16w", INT8_WEIGHTS: "int8w"}


def store_weights(src: str | Path, dst: str | Path, form: str = FP16_WEIGHTS) -> Path:
    """Write ``dst``: ``src`` with its float32 initializers stored in ``form`` (see the module docstring) and
    restored to float32 by constant nodes at the top of the graph; metadata and sidecar restated."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if form not in FORMS:
        raise ConversionError(f"unknown stored-weights form {form!r}; valid: {', '.join(FORMS)}")
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ConversionError(f"{src} does not exist; pass an exported float32 .onnx file")
    meta = ModelMetadata.read_sidecar(src)
    if meta.quantization != "fp32":
        raise ConversionError(f"{src} is {meta.quantization}, not fp32: convert the float32 export")
    model = onnx.load(str(src))
    graph = model.graph
    casts, kept = [], []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            kept.append(init)
            continue
        weights = numpy_helper.to_array(init)
        if form == INT8_WEIGHTS and weights.ndim >= 2 and weights.size >= INT8_MIN_VALUES:
            # symmetric per output channel: w ~= q * scale, q in [-127, 127]
            peak = np.abs(weights.reshape(len(weights), -1)).max(axis=1)
            scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32).reshape((-1,) + (1,) * (weights.ndim - 1))
            q = numpy_helper.from_array(np.clip(np.rint(weights / scale), -127, 127).astype(np.int8),
                                        init.name + _INT8_SUFFIX)
            scales = numpy_helper.from_array(scale, init.name + _INT8_SUFFIX + "_scale")
            kept += [q, scales]
            casts += [helper.make_node("Cast", [q.name], [q.name + "_f"], to=TensorProto.FLOAT,
                                       name=f"{q.name}_cast"),
                      helper.make_node("Mul", [q.name + "_f", scales.name], [init.name], name=f"{q.name}_scale_mul")]
            continue
        half = numpy_helper.from_array(weights.astype(np.float16), init.name + _CAST_SUFFIX)
        kept.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT,
                                      name=f"{init.name}{_CAST_SUFFIX}_cast"))
    if not casts:
        raise ConversionError(f"{src} has no float32 weights to store in fewer bytes")
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)  # the casts first: the graph stays topologically sorted
    del graph.node[:]
    graph.node.extend(nodes)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp.onnx")
    onnx.save(model, str(tmp))
    onnx.checker.check_model(str(tmp), full_check=True)
    file_meta = dataclasses.replace(meta, quantization=form)
    embed_onnx_metadata(tmp, file_meta)
    tmp.replace(dst)
    file_meta.write_sidecar(dst)
    log.info("wrote %s (%.1f MB, %s) from %s (%.1f MB)", dst, dst.stat().st_size / 1e6, form, src,
             src.stat().st_size / 1e6)
    return dst


def check_stored_weights(src: str | Path, dst: str | Path, photos_dir: str | Path, *, count: int = 1000,
                         models_dir: str | Path | None = None) -> dict[str, Any]:
    """Parity of ``dst`` against ``src`` on up to ``count`` photos of ``photos_dir`` (the embedder's crops cut by
    ``models_dir``'s segmenter), at the parity tier of ``dst``'s form; returns the record written to
    ``<dst>.parity.json``."""
    from coinvision.sdk.runtimes import load_model

    src, dst = Path(src), Path(dst)
    reference, candidate = load_model(src), load_model(dst)
    meta = reference.meta
    kind = meta.name
    quantization = candidate.meta.quantization
    if quantization not in FORMS:
        raise ConversionError(f"{dst} is {quantization}, not one of {', '.join(FORMS)}: write it with store_weights")
    segment = None
    if kind == "embedder":
        if models_dir is None:
            raise ConversionError("an embedder check needs --models (the folder whose segmenter cuts the crops)")
        from coinvision.sdk.segmenter import Segmenter

        segment = Segmenter.from_dir(models_dir, runtime="tflite").segment
    crop = CropParams.from_metadata(meta)
    paths = pick_evenly(list_photos(photos_dir), count)
    squares = model_squares(kind, paths, photos_dir, meta.input.size_px, segment,
                            crop_margin_frac=crop.crop_margin_frac, interpolation=crop.interpolation)
    rotations = crop.embed_rotations if kind == "embedder" else 1
    result = check_parity(kind, quantization, reference.predict, candidate.predict,
                          ParitySet(squares.squares, squares.labels, squares.sources, rotations))
    record = {"file": dst.name, "reference": str(src), "photos": str(photos_dir), "quantization": quantization,
              "bytes": dst.stat().st_size, "reference_bytes": src.stat().st_size, **result.to_dict()}
    dst.with_name(dst.name + ".parity.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="float32 .onnx (with its .meta.json)")
    parser.add_argument("dst", type=Path, help="the .onnx to write")
    parser.add_argument("--form", default=FP16_WEIGHTS, choices=tuple(FORMS), help="how the weights are stored")
    parser.add_argument("--check-images", type=Path, required=True, help="real photos to check parity on")
    parser.add_argument("--check-count", type=int, default=1000)
    parser.add_argument("--models", type=Path, default=None, help="embedder only: the folder whose segmenter cuts")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        store_weights(args.src, args.dst, args.form)
        record = check_stored_weights(args.src, args.dst, args.check_images, count=args.check_count,
                                    models_dir=args.models)
    except CoinVisionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    figures = ", ".join(f"{k} {v:.5f}" for k, v in record["figures"].items())
    print(f"{args.dst}: {record['bytes'] / 1e6:.1f} MB (from {record['reference_bytes'] / 1e6:.1f} MB); vs "
          f"{args.src}: {figures}; {'pass' if record['passed'] else 'FAIL: ' + '; '.join(record['failures'])}")
    return 0 if record["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
