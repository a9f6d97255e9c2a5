"""One calling convention for every runtime: ``predict(square_rgb_uint8) -> output array`` (batch dim dropped).

The torch-free runtimes (ONNX Runtime, TFLite, Core ML) live in the SDK (``coinvision.sdk.runtimes``), since a
phone runs them too; this module adds the PyTorch reference predictor the converters compare them against.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from coinvision.sdk.preprocess import InputSpec, to_model_input
from coinvision.sdk.runtimes import Predictor, onnx_predictor, predictor_for, tflite_predictor

__all__ = ["Predictor", "onnx_predictor", "predictor_for", "tflite_predictor", "torch_predictor"]


def torch_predictor(model, spec: InputSpec) -> Predictor:
    """PyTorch model (NCHW input, whatever ``spec.layout`` says) -> raw model output of one image."""
    import torch

    spec = dataclasses.replace(spec, layout="NCHW")
    model = model.eval()

    def predict(square: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(to_model_input(square, spec))).numpy()[0]

    return predict
