"""Run an exported model on a phone's runtimes: ONNX Runtime, TFLite (ai-edge-litert), Core ML (macOS only).

One calling convention for every runtime: ``predict(square_rgb_uint8) -> output array`` (batch dimension
dropped). Each predictor turns the image into its model input with ``to_model_input`` and the input spec from
the model's sidecar metadata (layout included), so layout and normalisation are decided in exactly one place.
No torch, no tensorflow: this module is what the mobile SDKs mirror.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from coinvision.sdk.errors import ConfigError, ModelLoadError
from coinvision.sdk.model_meta import ModelMetadata
from coinvision.sdk.preprocess import to_model_input

__all__ = [
    "RUNTIMES",
    "RUNTIME_SUFFIXES",
    "LoadedModel",
    "Predictor",
    "check_coreml_platform",
    "check_model_output",
    "check_models_dir",
    "check_pipeline_metadata",
    "coreml_predictor",
    "dequantize_tensor",
    "load_model",
    "load_pipeline_model",
    "onnx_predictor",
    "predictor_for",
    "quantize_tensor",
    "tflite_predictor",
]

log = logging.getLogger(__name__)

Predictor = Callable[[np.ndarray], np.ndarray]

# runtime name -> file suffix of its model files in a models folder
RUNTIME_SUFFIXES = {"tflite": ".tflite", "onnx": ".onnx", "coreml": ".mlpackage"}
RUNTIMES = tuple(RUNTIME_SUFFIXES)  # "tflite" (default), "onnx", "coreml" (macOS only)
_INSTALL_HINT = "install the SDK extra: pip install 'coinvision[sdk]'"


@dataclass(frozen=True)
class LoadedModel:
    """A model file ready to run, with the metadata it was exported with."""

    path: Path
    meta: ModelMetadata
    predict: Predictor


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ModelLoadError(f"{path}: model file is missing; export it with `coinvision export` or fix the path")


def onnx_predictor(path: str | Path, num_threads: int | None = 1, meta: ModelMetadata | None = None) -> Predictor:
    """ONNX Runtime on CPU. ``num_threads=None`` lets ONNX Runtime pick (all cores)."""
    path = Path(path)
    _check_file(path)
    meta = meta or ModelMetadata.read_sidecar(path)
    try:
        import onnxruntime as ort
    except ModuleNotFoundError as exc:
        raise ModelLoadError(f"{path}: the onnxruntime package is not installed; {_INSTALL_HINT}") from exc
    options = ort.SessionOptions()
    if num_threads is not None:
        options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT's pybind errors (InvalidProtobuf, Fail, ...) share no base below Exception
        raise ModelLoadError(f"{path}: ONNX Runtime cannot load it ({exc}); re-export the model") from exc
    input_name = session.get_inputs()[0].name

    def predict(square: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: to_model_input(square, meta.input)})[0][0]

    return predict


def quantize_tensor(x: np.ndarray, detail: dict) -> np.ndarray:
    """Float input -> the dtype of a TFLite tensor (``get_input_details`` entry), with its scale and zero point."""
    if detail["dtype"] == np.float32:
        return x
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(detail["dtype"])


def dequantize_tensor(y: np.ndarray, detail: dict) -> np.ndarray:
    """A TFLite tensor's values as float32 (``detail``: its ``get_*_details`` entry)."""
    if y.dtype == np.float32:
        return y
    scale, zero = detail["quantization"]
    return (y.astype(np.float32) - zero) * (scale or 1.0)


def tflite_predictor(path: str | Path, num_threads: int | None = 1, meta: ModelMetadata | None = None) -> Predictor:
    """Runs any of the exported quantizations; int8 input/output tensors are (de)quantized with their params."""
    path = Path(path)
    _check_file(path)
    meta = meta or ModelMetadata.read_sidecar(path)
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ModuleNotFoundError as exc:
        raise ModelLoadError(f"{path}: the ai-edge-litert package is not installed; {_INSTALL_HINT}") from exc
    try:
        interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{path}: the TFLite interpreter cannot load it ({exc}); re-export the model") from exc
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]

    def predict(square: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(inp["index"], quantize_tensor(to_model_input(square, meta.input), inp))
        interpreter.invoke()
        return np.array(dequantize_tensor(interpreter.get_tensor(out["index"]), out)[0], dtype=np.float32)

    return predict


def check_coreml_platform(path: Path) -> None:
    """Core ML predictions need the Core ML framework: refuse anywhere but macOS, naming the alternatives."""
    if platform.system() != "Darwin":
        raise ModelLoadError(
            f"{path}: Core ML models run only on macOS/iOS (this is {platform.system()}); "
            "use runtime='tflite' or runtime='onnx' here"
        )


def coreml_predictor(path: str | Path, num_threads: int | None = None, meta: ModelMetadata | None = None) -> Predictor:
    """Core ML ``.mlpackage`` through coremltools; predictions need the Core ML framework, i.e. macOS."""
    path = Path(path)
    check_coreml_platform(path)
    _check_file(path)
    meta = meta or ModelMetadata.read_sidecar(path)
    try:
        import coremltools as ct
    except ModuleNotFoundError as exc:
        raise ModelLoadError(f"{path}: the coremltools package is not installed; pip install coremltools") from exc
    try:
        model = ct.models.MLModel(str(path))
    except Exception as exc:  # coremltools surfaces framework errors with assorted types
        raise ModelLoadError(f"{path}: Core ML cannot load it ({exc}); re-export the model") from exc
    input_name = model.get_spec().description.input[0].name

    def predict(square: np.ndarray) -> np.ndarray:
        outputs = model.predict({input_name: to_model_input(square, meta.input)})
        return np.asarray(outputs[meta.output], dtype=np.float32)[0]

    return predict


_PREDICTORS = {".onnx": onnx_predictor, ".tflite": tflite_predictor, ".mlpackage": coreml_predictor}


def predictor_for(path: str | Path, num_threads: int | None = 1) -> Predictor:
    """The predictor for a model file, chosen by its suffix (``.onnx``, ``.tflite``, ``.mlpackage``)."""
    return load_model(path, num_threads).predict


def load_model(path: str | Path, num_threads: int | None = 1) -> LoadedModel:
    """Read the sidecar metadata and open the model on the runtime its suffix names."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _PREDICTORS:
        raise ModelLoadError(f"{path}: no runtime for {suffix!r} files; use one of {', '.join(sorted(_PREDICTORS))}")
    if suffix == ".mlpackage":
        check_coreml_platform(path)  # the platform is the first thing wrong there, not a missing file
    _check_file(path)
    meta = ModelMetadata.read_sidecar(path)
    predict = _PREDICTORS[suffix](path, num_threads, meta)
    log.debug("loaded %s (%s, %s, fingerprint %s)", path, meta.runtime_format, meta.quantization, meta.fingerprint)
    return LoadedModel(path=path, meta=meta, predict=predict)


# ------------------------------------------------------------------------------ the pipeline's two models

_EXPECTED_OUTPUT = {"segmenter": "mask_logits", "embedder": "embedding"}


def check_models_dir(models_dir: Path, runtime: str, kinds: Sequence[str]) -> None:
    """Refuse an unknown runtime, Core ML off macOS and a missing folder before any file is opened."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime {runtime!r} is not supported; use one of {', '.join(RUNTIMES)}")
    suffix = RUNTIME_SUFFIXES[runtime]
    if runtime == "coreml":
        check_coreml_platform(models_dir / f"{kinds[0]}{suffix}")
    if not models_dir.is_dir():
        files = " and ".join(f"{kind}{suffix}" for kind in kinds)
        raise ModelLoadError(
            f"models folder {models_dir} does not exist; pass the folder holding {files} "
            "(the release exports are in models/release)"
        )


def load_pipeline_model(models_dir: Path, kind: str, runtime: str, num_threads: int | None) -> LoadedModel:
    """``<kind>.<ext>`` of ``models_dir`` for ``runtime``, its sidecar metadata checked against the file."""
    path = models_dir / f"{kind}{RUNTIME_SUFFIXES[runtime]}"
    if not path.exists():
        raise ModelLoadError(_missing_model_message(path, kind, runtime))
    model = load_model(path, num_threads)
    if model.meta.runtime_format and model.meta.runtime_format != runtime:
        raise ModelLoadError(
            f"{path}: its metadata describes a {model.meta.runtime_format!r} model, not {runtime!r}; "
            "re-export the model so the sidecar .meta.json belongs to this file"
        )
    return model


def check_pipeline_metadata(model: LoadedModel, kind: str) -> None:
    """The metadata must describe the ``kind`` of the pipeline (``segmenter`` | ``embedder``) with its output."""
    meta = model.meta
    if meta.name != kind:
        raise ModelLoadError(
            f"{model.path}: its metadata says it is the {meta.name!r}, expected the {kind}; "
            "the segmenter and embedder files may be swapped"
        )
    if meta.output != _EXPECTED_OUTPUT[kind]:
        raise ModelLoadError(
            f"{model.path}: the {kind} must output {_EXPECTED_OUTPUT[kind]!r}, its metadata says {meta.output!r}; "
            "re-export it with coinvision export"
        )
    if kind == "embedder" and not (isinstance(meta.embedding_dim, int) and meta.embedding_dim > 0):
        raise ModelLoadError(
            f"{model.path}: embedder metadata has no embedding_dim ({meta.embedding_dim!r}); re-export it"
        )
    if kind == "segmenter" and meta.threshold is not None and not 0.0 < meta.threshold < 1.0:
        raise ModelLoadError(f"{model.path}: segmenter threshold {meta.threshold} is not a probability in (0, 1)")


def check_model_output(model: LoadedModel, expected_values: int) -> None:
    """Run the model once on a blank input: a model whose output does not fit its metadata fails here, at load
    time, with the file named, rather than on the first photo."""
    size = model.meta.input.size_px
    try:
        out = np.asarray(model.predict(np.zeros((size, size, 3), np.uint8)))
    except Exception as exc:  # runtimes raise assorted types (ORT's have no common base)
        raise ModelLoadError(
            f"{model.path}: running it on a {size}x{size} input failed ({type(exc).__name__}: {exc}); "
            "its metadata (input size/layout) does not fit the model, re-export it"
        ) from exc
    if out.size != expected_values:
        raise ModelLoadError(
            f"{model.path}: output has {out.size} values (shape {out.shape}), its metadata implies "
            f"{expected_values}; re-export the model so file and metadata agree"
        )


def _missing_model_message(path: Path, kind: str, runtime: str) -> str:
    present = sorted(
        p.name for p in path.parent.iterdir() if p.name.startswith(("segmenter.", "embedder.")) and
        not p.name.endswith(".json")
    )
    others = [rt for rt, suffix in RUNTIME_SUFFIXES.items()
              if rt != runtime and (path.parent / f"{kind}{suffix}").exists()]
    hint = f"; this folder has {', '.join(present)}" if present else ""
    if others:
        hint += f" (try runtime={others[0]!r})"
    return f"{path}: the {kind} model for runtime {runtime!r} is missing{hint}; export it with `coinvision export`"
