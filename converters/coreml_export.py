"""PyTorch -> Core ML ``mlprogram`` (iOS 16+) with coremltools 9, plus compressed variants.

Variants (all from one fp16 mlprogram):

- ``fp16``: fp16 weights and compute (the default for the Neural Engine).
- ``w8``: ``linear_quantize_weights`` 8-bit, per-channel symmetric.
- ``palette8`` / ``palette6``: k-means weight palettization with 2^8 / 2^6 entries (per tensor).

The input is the normalised NHWC float tensor of the pipeline spec (``MLMultiArray``; ``phone_graph.nhwc_input``
transposes inside the graph, as for TFLite), stated in the metadata, so the iOS SDK uses the one preprocessing
spec. Linux cannot run Core ML predictions; ``validate_coreml`` checks
what can be checked here (spec, inputs/outputs/shapes, op count, metadata) and the parity test runs where
Core ML executes (macOS).
"""

from __future__ import annotations

import contextlib
import logging
import platform
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from coinvision.converters.metadata import for_runtime, read_coreml_metadata, set_coreml_metadata
from coinvision.converters.phone_graph import freeze_same_padding, nhwc_input
from coinvision.sdk.errors import ConversionError
from coinvision.sdk.model_meta import ModelMetadata

__all__ = [
    "COREML_VARIANTS",
    "check_variant",
    "convert_coreml_fp16",
    "coreml_can_predict",
    "coreml_filename",
    "export_coreml",
    "validate_coreml",
]

log = logging.getLogger(__name__)

COREML_VARIANTS = ("fp16", "w8", "palette6", "palette8")
INPUT_NAME = "input"


def import_coremltools():
    """Import coremltools after torch's compiler stack: coremltools pulls in TensorFlow, and importing triton
    (via torch._dynamo) after TensorFlow segfaults in this environment."""
    with contextlib.suppress(ImportError):  # an install without torch can still read Core ML specs
        import torch._dynamo  # noqa: F401
    import coremltools

    return coremltools


def coreml_can_predict() -> bool:
    """Core ML predictions need macOS (the Core ML framework); everywhere else only the spec can be checked."""
    return platform.system() == "Darwin"


def check_variant(variant: str) -> None:
    if variant not in COREML_VARIANTS:
        raise ConversionError(f"unknown Core ML variant {variant!r}; valid: {', '.join(COREML_VARIANTS)}")


def coreml_filename(kind: str, variant: str) -> str:
    """``<kind>.mlpackage`` for the fp16 base, ``<kind>.<variant>.mlpackage`` for the compressed ones."""
    check_variant(variant)
    return f"{kind}.mlpackage" if variant == "fp16" else f"{kind}.{variant}.mlpackage"


def convert_coreml_fp16(model, meta: ModelMetadata):
    """The base fp16 mlprogram (an ``MLModel``; not loaded for prediction off macOS)."""
    import torch

    ct = import_coremltools()
    size = meta.input.size_px
    example = torch.zeros(1, size, size, 3)
    try:
        with torch.no_grad():
            # timm's dynamic "same" padding is shape code the TorchScript frontend cannot convert
            traced = torch.jit.trace(nhwc_input(freeze_same_padding(model, size)), example)
        return ct.convert(
            traced,
            inputs=[ct.TensorType(name=INPUT_NAME, shape=tuple(example.shape))],
            outputs=[ct.TensorType(name=meta.output)],
            convert_to="mlprogram",
            minimum_deployment_target=ct.target.iOS16,
            compute_precision=ct.precision.FLOAT16,
            skip_model_load=not coreml_can_predict(),
        )
    except Exception as exc:  # coremltools raises assorted types from its op translators
        raise ConversionError(f"Core ML conversion of {meta.name} failed: {type(exc).__name__}: {exc}") from exc


def compress_coreml(mlmodel, variant: str, *, kmeans_workers: int = 1):
    import_coremltools()
    import coremltools.optimize.coreml as cto

    check_variant(variant)
    if variant == "fp16":
        return mlmodel
    if variant == "w8":
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel")
        return cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(global_config=op))
    nbits = 8 if variant == "palette8" else 6
    op = cto.OpPalettizerConfig(mode="kmeans", nbits=nbits, granularity="per_tensor", num_kmeans_workers=kmeans_workers)
    return cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=op))


def export_coreml(
    model, meta: ModelMetadata, out_path: str | Path, *, variant: str = "fp16", base=None, kmeans_workers: int = 1
) -> Path:
    """Write ``out_path`` (an ``.mlpackage`` folder) + sidecar. Pass ``base`` (fp16 MLModel) to reuse it."""
    check_variant(variant)
    out_path = Path(out_path)
    if out_path.suffix != ".mlpackage":
        raise ConversionError(f"{out_path}: Core ML mlprogram files must end in .mlpackage")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    mlmodel = compress_coreml(
        base if base is not None else convert_coreml_fp16(model, meta), variant, kmeans_workers=kmeans_workers
    )
    file_meta = for_runtime(meta, "coreml", variant, minimum_deployment_target="iOS16")
    set_coreml_metadata(mlmodel, file_meta)
    spec = mlmodel.get_spec()
    for desc in spec.description.input:
        desc.shortDescription = (
            f"normalised RGB NHWC float 1x{meta.input.size_px}x{meta.input.size_px}x3, letterboxed, "
            "(x/255 - mean) / std (mean/std in the metadata)"
        )
    for desc in spec.description.output:
        desc.shortDescription = (
            f"{meta.embedding_dim}-d L2-normalised embedding" if meta.output == "embedding"
            else "coin mask logits (sigmoid -> probability)"
        )
    mlmodel = _with_spec(mlmodel, spec)
    tmp = out_path.with_name(out_path.stem + ".tmp.mlpackage")
    shutil.rmtree(tmp, ignore_errors=True)
    mlmodel.save(str(tmp))
    shutil.rmtree(out_path, ignore_errors=True)
    tmp.rename(out_path)
    file_meta.write_sidecar(out_path)
    log.info("wrote %s (%s)", out_path, variant)
    return out_path


def _with_spec(mlmodel, spec):
    ct = import_coremltools()

    return ct.models.MLModel(
        spec, weights_dir=mlmodel.weights_dir, skip_model_load=not coreml_can_predict()
    )


def validate_coreml(path: str | Path, expected: ModelMetadata | None = None) -> dict[str, Any]:
    """Load the spec and report what Linux can check: type, IO names/shapes, ops, metadata, size."""
    ct = import_coremltools()

    path = Path(path)
    if not path.exists():
        raise ConversionError(f"{path} does not exist")
    mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
    spec = mlmodel.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise ConversionError(f"{path}: expected an mlprogram, got {spec.WhichOneof('Type')}")
    meta = read_coreml_metadata(spec)
    ops: Counter[str] = Counter()
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                ops[op.type] += 1
    inputs = {i.name: list(i.type.multiArrayType.shape) for i in spec.description.input}
    outputs = {o.name: list(o.type.multiArrayType.shape) for o in spec.description.output}
    report = {
        "spec_version": int(spec.specificationVersion),
        "inputs": inputs,
        "outputs": outputs,
        "op_count": int(sum(ops.values())),
        "op_types": dict(sorted(ops.items())),
        "metadata": meta.to_dict(),
        "size_bytes": sum(f.stat().st_size for f in path.rglob("*") if f.is_file()),
    }
    if expected is not None:
        problems = []
        size = expected.input.size_px
        if inputs.get(INPUT_NAME) != [1, size, size, 3]:
            problems.append(f"input {inputs} != {{'{INPUT_NAME}': [1, {size}, {size}, 3]}}")
        if expected.output not in outputs:
            problems.append(f"output {expected.output!r} missing (have {list(outputs)})")
        if meta.fingerprint != expected.fingerprint:
            problems.append(f"fingerprint {meta.fingerprint} != {expected.fingerprint}")
        if meta.input.layout != "NHWC":
            problems.append(f"metadata layout {meta.input.layout} != NHWC")
        if problems:
            raise ConversionError(f"{path}: " + "; ".join(problems))
    return report
