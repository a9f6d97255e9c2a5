"""Bias correction for int8 weights (Nagel et al. 2019, "Data-Free Quantization", empirical variant).

Rounding a layer's weights to int8 shifts its outputs by ``dW @ E[x]`` on average; with only 9 taps per
channel, MobileNet's depthwise convolutions shift the most, and the shift compounds through the network.
Before quantizing, each conv / depthwise / fully-connected bias in the fp32 flatbuffer is lowered by that
expected shift, with ``E[x]`` measured per input channel on the calibration photos and ``dW`` computed exactly
as ai-edge-quantizer rounds the weights (symmetric, per output channel, narrow range [-127, 127]).
The float model is unchanged; only the flatbuffer that is about to be quantized gets the corrected biases.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

__all__ = ["correct_biases"]

log = logging.getLogger(__name__)

_CONV_2D, _DEPTHWISE_CONV_2D, _FULLY_CONNECTED = 3, 4, 9  # tflite BuiltinOperator codes


def _int8_error(weights: np.ndarray, channel_axis: int) -> np.ndarray:
    """``round_int8(w) - w`` with one symmetric scale per output channel (the quantizer's scheme)."""
    axes = tuple(a for a in range(weights.ndim) if a != channel_axis)
    scale = np.max(np.abs(weights), axis=axes, keepdims=True) / 127.0
    scale = np.where(scale == 0, 1.0, scale)
    return np.clip(np.round(weights / scale), -127, 127) * scale - weights


def correct_biases(fp32_bytes: bytes, calibration: Sequence[np.ndarray]) -> bytes:
    """The fp32 flatbuffer with int8-rounding-compensated biases (``calibration``: the model's input batches)."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(fp32_bytes))
    graph = model.subgraphs[0]
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    tensor_users: dict[int, int] = {}
    for op in graph.operators:
        for t in op.inputs:
            tensor_users[int(t)] = tensor_users.get(int(t), 0) + 1
    buffer_users: dict[int, int] = {}
    for tensor in graph.tensors:
        buffer_users[tensor.buffer] = buffer_users.get(tensor.buffer, 0) + 1

    targets = []
    for op in graph.operators:
        code = codes[op.opcodeIndex]
        if code not in (_CONV_2D, _DEPTHWISE_CONV_2D, _FULLY_CONNECTED) or len(op.inputs) < 3 or op.inputs[2] < 0:
            continue
        x, w, b = (int(i) for i in op.inputs[:3])
        w_data, b_data = model.buffers[graph.tensors[w].buffer].data, model.buffers[graph.tensors[b].buffer].data
        if w_data is None or b_data is None or tensor_users.get(b, 0) != 1:
            continue  # weights computed at run time, or a bias shared between ops: leave it
        targets.append((code, x, w, b))
    if not targets:
        return fp32_bytes

    interpreter = Interpreter(model_content=fp32_bytes, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    input_index = interpreter.get_input_details()[0]["index"]
    sums: dict[int, np.ndarray] = {}
    for batch in calibration:
        interpreter.set_tensor(input_index, np.asarray(batch, np.float32))
        interpreter.invoke()
        for _, x, _, _ in targets:
            value = interpreter.get_tensor(x)
            channel_mean = value.reshape(-1, value.shape[-1]).mean(axis=0, dtype=np.float64)
            sums[x] = sums.get(x, 0.0) + channel_mean
    corrected = 0
    for code, x, w, b in targets:
        mean_x = sums[x] / len(calibration)
        w_tensor, b_tensor = graph.tensors[w], graph.tensors[b]
        weights = np.frombuffer(bytes(model.buffers[w_tensor.buffer].data), np.float32).reshape(w_tensor.shape)
        bias = np.frombuffer(bytes(model.buffers[b_tensor.buffer].data), np.float32).copy()
        if code == _DEPTHWISE_CONV_2D:  # (1, kh, kw, C): output channel c reads input channel c only
            if weights.shape[-1] != mean_x.shape[0]:
                continue  # channel multiplier > 1
            shift = _int8_error(weights, 3).sum(axis=(0, 1, 2)) * mean_x
        elif code == _CONV_2D:  # (O, kh, kw, I)
            shift = _int8_error(weights, 0).sum(axis=(1, 2)) @ mean_x
        else:  # FULLY_CONNECTED (O, I)
            shift = _int8_error(weights, 0) @ mean_x
        new_bias = (bias - shift).astype(np.float32)
        if buffer_users.get(b_tensor.buffer, 0) > 1:  # give this bias its own buffer before editing
            from ai_edge_litert import schema_py_generated as schema

            model.buffers.append(schema.BufferT())
            b_tensor.buffer = len(model.buffers) - 1
        model.buffers[b_tensor.buffer].data = np.frombuffer(new_bias.tobytes(), np.uint8)
        corrected += 1
    log.info("bias correction: %d of %d layers adjusted", corrected, len(targets))
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
