"""Embed :class:`ModelMetadata` inside each exported file, and read it back.

Every format carries the same JSON document (``ModelMetadata.to_json()``) under the key ``coinvision.meta``:

- ONNX: ``metadata_props`` (``onnxruntime`` exposes it as ``get_modelmeta().custom_metadata_map``).
- TFLite: a named entry in the flatbuffer's ``metadata`` table (``Model.metadata[name] -> buffer``); this is
  the slot the TFLite Support metadata uses too, so it survives copying and any reader with the schema can
  get it. The SDK and the mobile SDKs still read the sidecar ``<file>.meta.json`` (written with identical
  content) because ai-edge-litert's Python interpreter has no API for flatbuffer metadata; the test suite
  checks that both copies agree.
- Core ML: ``user_defined_metadata`` plus author/short description.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from coinvision.sdk.errors import ConversionError, ModelLoadError
from coinvision.sdk.model_meta import ModelMetadata

__all__ = [
    "META_KEY",
    "embed_onnx_metadata",
    "embed_tflite_metadata",
    "for_runtime",
    "read_embedded_metadata",
    "read_onnx_metadata",
    "read_tflite_metadata",
    "set_coreml_metadata",
]

log = logging.getLogger(__name__)

META_KEY = "coinvision.meta"

# Layout of the input tensor each format's file takes (the TFLite/Core ML files transpose NHWC inside, see layout.py).
FORMAT_LAYOUT = {"onnx": "NCHW", "tflite": "NHWC", "coreml": "NHWC", "torch": "NCHW"}


def for_runtime(meta: ModelMetadata, runtime_format: str, quantization: str, **extra: Any) -> ModelMetadata:
    """The source model's metadata, restated for one exported file (format, quantization, input layout)."""
    if runtime_format not in FORMAT_LAYOUT:
        raise ConversionError(f"unknown format {runtime_format!r}; valid: {', '.join(FORMAT_LAYOUT)}")
    spec = dataclasses.replace(meta.input, layout=FORMAT_LAYOUT[runtime_format])
    return dataclasses.replace(
        meta, input=spec, runtime_format=runtime_format, quantization=quantization, extra={**meta.extra, **extra}
    )


# --- ONNX -----------------------------------------------------------------------------------------------


def embed_onnx_metadata(path: str | Path, meta: ModelMetadata) -> None:
    import onnx

    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    props[META_KEY] = meta.to_json()
    props["fingerprint"] = meta.fingerprint
    del model.metadata_props[:]
    for key, value in sorted(props.items()):
        model.metadata_props.add(key=key, value=value)
    model.doc_string = _describe(meta)
    onnx.save(model, str(path))


def read_onnx_metadata(path: str | Path) -> ModelMetadata:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if META_KEY not in props:
        raise ModelLoadError(f"{path}: no {META_KEY} metadata in the ONNX file; re-run coinvision export")
    return ModelMetadata.from_json(props[META_KEY])


# --- TFLite ---------------------------------------------------------------------------------------------


def embed_tflite_metadata(path: str | Path, meta: ModelMetadata) -> None:
    """Add (or replace) the ``coinvision.meta`` entry of the flatbuffer's metadata table."""
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    path = Path(path)
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))
    payload = np.frombuffer(meta.to_json().encode(), dtype=np.uint8)
    existing = [m for m in (model.metadata or []) if _as_str(m.name) == META_KEY]
    if existing:
        model.buffers[existing[0].buffer].data = payload
    else:
        buffer = schema.BufferT()
        buffer.data = payload
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name = META_KEY
        entry.buffer = len(model.buffers) - 1
        model.metadata = [*(model.metadata or []), entry]
    model.description = _describe(meta)
    data = flatbuffer_utils.convert_object_to_bytearray(model)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(bytes(data))
    tmp.replace(path)


def read_tflite_metadata(path_or_bytes: str | Path | bytes) -> ModelMetadata:
    """Read the embedded metadata without unpacking the whole model (fast on large files)."""
    from ai_edge_litert import schema_py_generated as schema

    data = path_or_bytes if isinstance(path_or_bytes, bytes | bytearray) else Path(path_or_bytes).read_bytes()
    try:
        model = schema.Model.GetRootAs(data, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if _as_str(entry.Name()) == META_KEY:
                raw = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
                return ModelMetadata.from_json(raw.decode())
    except (IndexError, ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path_or_bytes!s:.80}: not a readable TFLite flatbuffer ({exc})") from exc
    raise ModelLoadError(f"{path_or_bytes!s:.80}: no {META_KEY} metadata in the TFLite file; re-run coinvision export")


# --- Core ML --------------------------------------------------------------------------------------------


def set_coreml_metadata(mlmodel: Any, meta: ModelMetadata) -> None:
    """Write the metadata into a ``coremltools.models.MLModel`` (saved by the caller)."""
    mlmodel.author = "coinvision"
    mlmodel.short_description = _describe(meta)
    mlmodel.version = meta.fingerprint
    mlmodel.user_defined_metadata[META_KEY] = meta.to_json()
    mlmodel.user_defined_metadata["fingerprint"] = meta.fingerprint
    mlmodel.user_defined_metadata["name"] = meta.name


def read_coreml_metadata(spec_or_model: Any) -> ModelMetadata:
    spec = spec_or_model.get_spec() if hasattr(spec_or_model, "get_spec") else spec_or_model
    user = dict(spec.description.metadata.userDefined)
    if META_KEY not in user:
        raise ModelLoadError(f"Core ML model has no {META_KEY} metadata; re-run coinvision export")
    return ModelMetadata.from_json(user[META_KEY])


# --- any ------------------------------------------------------------------------------------------------


def read_embedded_metadata(path: str | Path) -> ModelMetadata:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return read_onnx_metadata(path)
    if suffix == ".tflite":
        return read_tflite_metadata(path)
    if suffix in (".mlpackage", ".mlmodel"):
        from coinvision.converters.coreml_export import import_coremltools

        ct = import_coremltools()
        return read_coreml_metadata(ct.models.MLModel(str(path), skip_model_load=True))
    raise ModelLoadError(f"{path}: unknown model file type {suffix!r}; expected .onnx, .tflite or .mlpackage")


def _describe(meta: ModelMetadata) -> str:
    spec = meta.input
    if meta.output == "embedding":
        out = f"{meta.embedding_dim}-d embedding, {'L2-normalised' if meta.l2_normalized else 'not normalised'}"
    else:
        out = "coin mask logits 1xHxW (sigmoid -> probability)"
    return (
        f"coinvision {meta.name} ({meta.architecture}), fingerprint {meta.fingerprint}; input {spec.layout} "
        f"{spec.size_px}x{spec.size_px} {spec.color_order}, (x/255 - mean {list(spec.mean)}) / std {list(spec.std)}; "
        f"output {out}; threshold {meta.threshold}; {meta.runtime_format} {meta.quantization}"
    )


def _as_str(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


def rewrite_metadata(path: str | Path, meta: ModelMetadata) -> None:
    """Replace the metadata of an exported file in place, inside the file and in its sidecar (release-time
    changes of a pipeline parameter, e.g. ``embed_rotations``, without re-exporting the weights)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        embed_onnx_metadata(path, meta)
    elif suffix == ".tflite":
        embed_tflite_metadata(path, meta)
    elif suffix == ".mlpackage":
        import shutil

        from coinvision.converters.coreml_export import import_coremltools

        ct = import_coremltools()
        model = ct.models.MLModel(str(path), skip_model_load=True)
        set_coreml_metadata(model, meta)
        staged = path.with_name(f".tmp.{path.name}")  # coremltools copies the package: never onto itself
        shutil.rmtree(staged, ignore_errors=True)
        model.save(str(staged))
        shutil.rmtree(path)
        staged.replace(path)
    else:
        raise ConversionError(f"{path}: cannot rewrite metadata of a {suffix!r} file (onnx, tflite, mlpackage)")
    meta.write_sidecar(path)
