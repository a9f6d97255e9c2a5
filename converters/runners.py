"""One calling convention for every runtime: ``predict(square_rgb_uint8) -> output array`` (batch dim dropped).

Each runner turns the image into its model input with ``to_model_input`` and the input spec from the
model's metadata (layout included), so layout and normalisation are decided in exactly one place.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from coinvision.sdk.errors import ModelLoadError
from coinvision.sdk.model_meta import ModelMetadata
from coinvision.sdk.preprocess import InputSpec, to_model_input

__all__ = ["Predictor", "onnx_predictor", "predictor_for", "tflite_predictor", "torch_predictor"]

Predictor = Callable[[np.ndarray], np.ndarray]


def torch_predictor(model, spec: InputSpec) -> Predictor:
    import dataclasses

    import torch

    spec = dataclasses.replace(spec, layout="NCHW")
    model = model.eval()

    def predict(square: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(to_model_input(square, spec))).numpy()[0]

    return predict


def onnx_predictor(path: str | Path, num_threads: int = 1) -> Predictor:
    import onnxruntime as ort

    meta = ModelMetadata.read_sidecar(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def predict(square: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: to_model_input(square, meta.input)})[0][0]

    return predict


def tflite_predictor(path: str | Path, num_threads: int = 1) -> Predictor:
    """Runs any of the exported quantizations; int8 input/output tensors are (de)quantized with their params."""
    from ai_edge_litert.interpreter import Interpreter

    meta = ModelMetadata.read_sidecar(path)
    interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]

    def predict(square: np.ndarray) -> np.ndarray:
        x = to_model_input(square, meta.input)
        if inp["dtype"] != np.float32:
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])
        if out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return np.array(y[0], dtype=np.float32)

    return predict


def predictor_for(path: str | Path, num_threads: int = 1) -> Predictor:
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return onnx_predictor(path, num_threads)
    if suffix == ".tflite":
        return tflite_predictor(path, num_threads)
    raise ModelLoadError(f"{path}: no runner for {suffix!r} files here (Core ML runs only on macOS)")
