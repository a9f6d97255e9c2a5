"""PyTorch -> TFLite with litert-torch, then quantized variants with ai-edge-quantizer.

Layout is handled once (``phone_graph.nhwc_input``): the ``.tflite`` file takes the NHWC float batch that
``to_model_input(..., InputSpec(layout="NHWC"))`` produces (the natural layout of an Android bitmap).
Normalisation stays outside the model, stated in the metadata, identical for every format.

Quantizations (all derived from the one fp32 flatbuffer, so they differ only in the quantization step):

- ``fp32``: as converted (``<kind>.tflite``, the file the SDK loads by default).
- ``fp16``: weights stored as float16, dequantized at load (compute stays fp32 on CPU, fp16 on GPU delegates).
- ``int8_dynamic``: int8 per-channel weights, activations quantized on the fly (float in/out).
- ``int8_full``: int8 per-channel weights and int8 activations calibrated on real photos (``<kind>.int8.tflite``);
  activation ranges are the min/max over every calibration photo. Ops whose output tensor name matches
  ``keep_float_regex`` stay float (the lever for sensitive ops).

With calibration photos, every int8-weight variant first gets bias correction (``bias_correction.py``): the
biases absorb the mean output shift that rounding the weights causes. On a trained MobileNetV2 embedder it
took full int8 from cosine 0.983 (min 0.906) to 0.995 (min 0.981), weight-only int8 from 0.995 to 0.9997.
- ``int16x8``: int8 weights, int16 activations (calibrated): the quantization-friendlier fallback when full
  int8 loses too much.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from coinvision.converters.metadata import embed_tflite_metadata, for_runtime
from coinvision.converters.phone_graph import nhwc_input
from coinvision.sdk.errors import ConversionError
from coinvision.sdk.model_meta import ModelMetadata

__all__ = [
    "CALIBRATED_QUANTIZATIONS",
    "INT8_WEIGHT_QUANTIZATIONS",
    "MIN_CALIBRATION_IMAGES",
    "TFLITE_QUANTIZATIONS",
    "check_quantization",
    "compact_name",
    "compact_tensor_names",
    "convert_tflite_fp32",
    "export_tflite",
    "quantize_tflite",
    "signature_input_name",
    "tflite_filename",
]

log = logging.getLogger(__name__)

# quantization -> file name suffix after "<kind>"
_FILE_SUFFIX = {
    "fp32": ".tflite",
    "fp16": ".fp16.tflite",
    "int8_dynamic": ".int8_dynamic.tflite",
    "int8_full": ".int8.tflite",
    "int16x8": ".int16x8.tflite",
}
TFLITE_QUANTIZATIONS = tuple(_FILE_SUFFIX)
CALIBRATED_QUANTIZATIONS = ("int8_full", "int16x8")
INT8_WEIGHT_QUANTIZATIONS = ("int8_dynamic", "int8_full", "int16x8")
MIN_CALIBRATION_IMAGES = 200  # the floor for release exports; smaller sets are allowed but recorded


def check_quantization(quantization: str) -> None:
    if quantization not in TFLITE_QUANTIZATIONS:
        raise ConversionError(
            f"unknown TFLite quantization {quantization!r}; valid: {', '.join(TFLITE_QUANTIZATIONS)}"
        )


def tflite_filename(kind: str, quantization: str) -> str:
    check_quantization(quantization)
    return kind + _FILE_SUFFIX[quantization]


def convert_tflite_fp32(model, size_px: int) -> bytes:
    """Convert an NCHW PyTorch model to an fp32 TFLite flatbuffer taking NHWC input."""
    import litert_torch
    import torch

    example = torch.zeros(1, size_px, size_px, 3)
    try:
        with torch.no_grad():
            edge = litert_torch.convert(nhwc_input(model), (example,))
        return bytes(edge.model_content())
    except Exception as exc:  # litert-torch raises assorted types from torch.export / MLIR
        raise ConversionError(f"TFLite conversion failed: {type(exc).__name__}: {exc}") from exc


def compact_name(name: str) -> str:
    """The short stand-in :func:`compact_tensor_names` gives a tensor name (a digest: the same name in an fp32 file and
    in a quantized file derived from it stays the same, so the two can still be compared tensor by tensor)."""
    return "t" + hashlib.blake2b(name.encode(), digest_size=8).hexdigest()


def compact_tensor_names(model_bytes: bytes) -> bytes:
    """The flatbuffer with its inner tensors' names replaced by :func:`compact_name`. litert-torch names every tensor by
    its whole module path (up to 2 KB each, ~5 % of an int8 embedder); nothing reads them at run time. The graph's
    input and output tensors and its signature keep their names (runtimes look those up)."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))
    for subgraph in model.subgraphs:
        kept = {*subgraph.inputs, *subgraph.outputs}
        for index, tensor in enumerate(subgraph.tensors):
            if index not in kept and tensor.name:
                tensor.name = compact_name(tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def signature_input_name(model_bytes: bytes) -> tuple[str, str]:
    """``(signature key, input tensor name)`` of a single-input TFLite model."""
    from ai_edge_litert.interpreter import Interpreter

    sigs = Interpreter(model_content=model_bytes).get_signature_list()
    name, io = next(iter(sigs.items()))
    return name, io["inputs"][0]


def _global_min_max(qsv: dict, new_qsv: dict) -> dict:
    """Activation ranges over ALL calibration photos. ai-edge-quantizer's default is a moving average (factor
    0.95), which weights the last ~20 photos and clips what the earlier ones saw: measured on the MobileNetV2
    embedder it cost 0.01 mean cosine (see the export report)."""
    if not qsv:
        return dict(new_qsv)
    return {**new_qsv, "min": np.minimum(qsv["min"], new_qsv["min"]), "max": np.maximum(qsv["max"], new_qsv["max"])}


def _calibrate(q, fp32_bytes: bytes, calibration: Sequence[np.ndarray]) -> dict:
    from ai_edge_quantizer import calibrator, recipe_manager

    signature, input_name = signature_input_name(fp32_bytes)
    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(q.get_quantization_recipe())
    calib = calibrator.Calibrator(fp32_bytes, num_threads=1, qsv_update_func=_global_min_max)
    calib.calibrate({signature: [{input_name: np.asarray(x, np.float32)} for x in calibration]}, manager)
    return calib.get_model_qsvs()


def quantize_tflite(
    fp32_bytes: bytes,
    quantization: str,
    calibration: Sequence[np.ndarray] | None = None,
    *,
    keep_float_regex: str | None = None,
    bias_correction: bool = True,
) -> bytes:
    """Derive a quantized flatbuffer from the fp32 one. ``calibration``: NHWC float batches (1,S,S,3).
    ``bias_correction`` applies to the int8-weight variants when ``calibration`` is given."""
    from ai_edge_quantizer import qtyping, quantizer, recipe

    check_quantization(quantization)
    if quantization == "fp32":
        return fp32_bytes
    if quantization in CALIBRATED_QUANTIZATIONS and not calibration:
        raise ConversionError(f"TFLite {quantization} needs calibration images (pass --calibration DIR)")
    if bias_correction and calibration and quantization in INT8_WEIGHT_QUANTIZATIONS:
        from coinvision.converters.bias_correction import correct_biases

        fp32_bytes = correct_biases(fp32_bytes, calibration)
    q = quantizer.Quantizer(bytearray(fp32_bytes))
    if quantization == "fp16":
        q.update_quantization_recipe(
            regex=".*",
            algorithm_key=quantizer.AlgorithmName.FLOAT_CASTING,
            operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
            op_config=qtyping.OpQuantizationConfig(
                weight_tensor_config=qtyping.TensorQuantizationConfig(
                    num_bits=16, dtype=qtyping.TensorDataType.FLOAT
                ),
                compute_precision=qtyping.ComputePrecision.FLOAT,
                explicit_dequantize=True,
            ),
        )
    elif quantization == "int8_dynamic":
        q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    elif quantization == "int8_full":
        q.load_quantization_recipe(recipe.static_wi8_ai8())  # per-channel weights (the recipe's default)
    else:  # int16x8
        q.load_quantization_recipe(recipe.static_wi8_ai16())
    if keep_float_regex and quantization in CALIBRATED_QUANTIZATIONS:
        q.update_quantization_recipe(
            regex=keep_float_regex,
            operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
            algorithm_key=quantizer.AlgorithmName.NO_QUANTIZE,
        )
    try:
        calibration_result = None
        if quantization in CALIBRATED_QUANTIZATIONS:
            calibration_result = _calibrate(q, fp32_bytes, calibration or ())
        result = q.quantize(calibration_result)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise ConversionError(f"TFLite {quantization} quantization failed: {exc}") from exc
    return bytes(result.quantized_model)


def export_tflite(
    model,
    meta: ModelMetadata,
    out_path: str | Path,
    *,
    quantization: str = "fp32",
    calibration: Sequence[np.ndarray] | None = None,
    fp32_bytes: bytes | None = None,
    keep_float_regex: str | None = None,
    bias_correction: bool = True,
) -> Path:
    """Write ``out_path`` (+ sidecar) in the given quantization. Pass ``fp32_bytes`` to reuse a conversion."""
    check_quantization(quantization)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if fp32_bytes is None:
        fp32_bytes = convert_tflite_fp32(model, meta.input.size_px)
    data = quantize_tflite(fp32_bytes, quantization, calibration, keep_float_regex=keep_float_regex,
                           bias_correction=bias_correction)
    if quantization != "fp32":  # the fp32 file keeps the readable names (quant_diagnose shows them)
        data = compact_tensor_names(data)
    extra: dict[str, object] = {"converter": "litert-torch + ai-edge-quantizer"}
    if quantization in INT8_WEIGHT_QUANTIZATIONS:
        extra["bias_correction"] = bool(bias_correction and calibration)
        if calibration:
            extra["calibration_images"] = len(calibration)
    if quantization in CALIBRATED_QUANTIZATIONS:
        extra["activation_ranges"] = "min/max over all calibration photos"
        if keep_float_regex:
            extra["keep_float_regex"] = keep_float_regex
    file_meta = for_runtime(meta, "tflite", quantization, **extra)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_bytes(data)
    embed_tflite_metadata(tmp, file_meta)
    tmp.replace(out_path)
    file_meta.write_sidecar(out_path)
    log.info("wrote %s (%s, %.1f MB)", out_path, quantization, out_path.stat().st_size / 1e6)
    return out_path
