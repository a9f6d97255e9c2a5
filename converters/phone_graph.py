"""The PyTorch graph the phone formats (TFLite, Core ML) convert: NHWC input and fixed "same" padding.

:func:`nhwc_input` - the one place the input layout changes. PyTorch and ONNX take NCHW. Phones hand over
interleaved RGB pixels (Android bitmaps, iOS pixel buffers), so the TFLite and Core ML files take NHWC and
transpose inside the graph. Each exported file's metadata states its layout (``InputSpec.layout``, see
``metadata.FORMAT_LAYOUT``); ``preprocess.to_model_input`` produces it. Normalisation (``(x/255 - mean) / std``)
stays outside every model, stated in the metadata.

:func:`freeze_same_padding` - timm's TF-style dynamic "same" padding frozen into fixed pads for one input size.

timm's ``Conv2dSame`` / ``MaxPool2dSame`` (``pad_type="same"``, used for weights ported from TF/TFLite) compute
their padding from the input shape at run time. Core ML's TorchScript frontend cannot convert that shape
arithmetic (``int`` of a traced tensor), and every exported file has a fixed input size anyway, so the export
graph gets the padding as constants: same numbers, no shape code.
"""

from __future__ import annotations

import copy
import logging
import math

__all__ = ["freeze_same_padding", "nhwc_input"]

log = logging.getLogger(__name__)


def _same_pad(size: int, kernel: int, stride: int, dilation: int) -> int:
    # timm.layers.padding.get_same_padding for a Python int
    return max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


def freeze_same_padding(model, size_px: int):
    """A copy of ``model`` (NCHW input ``size_px`` square) with every dynamic-same layer padded statically.
    Returns ``model`` itself when it has none."""
    import torch
    import torch.nn.functional as F
    from timm.layers import Conv2dSame
    from timm.layers.pool2d_same import MaxPool2dSame
    from torch import nn

    dynamic = (Conv2dSame, MaxPool2dSame)
    if not any(isinstance(m, dynamic) for m in model.modules()):
        return model
    model = copy.deepcopy(model).eval()
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [
        module.register_forward_pre_hook(lambda _m, args, name=name: sizes.__setitem__(name, tuple(args[0].shape[-2:])))
        for name, module in model.named_modules()
        if isinstance(module, dynamic)
    ]
    with torch.no_grad():
        model(torch.zeros(1, 3, size_px, size_px))
    for hook in hooks:
        hook.remove()

    class StaticPad(nn.Module):
        def __init__(self, inner: nn.Module, pads: tuple[int, int, int, int], value: float) -> None:
            super().__init__()
            self.inner, self.pads, self.value = inner, pads, value

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.pad(x, self.pads, value=self.value)
            base = nn.Conv2d if isinstance(self.inner, nn.Conv2d) else nn.MaxPool2d  # padding=0 in both
            return base.forward(self.inner, x)

    for name, (h, w) in sizes.items():
        module = model.get_submodule(name)
        k, s, d = (module.kernel_size, module.stride, module.dilation)
        k, s, d = ((v, v) if isinstance(v, int) else tuple(v) for v in (k, s, d))
        pad_h, pad_w = _same_pad(h, k[0], s[0], d[0]), _same_pad(w, k[1], s[1], d[1])
        pads = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
        value = 0.0 if isinstance(module, nn.Conv2d) else -math.inf
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, StaticPad(module, pads, value))
    log.debug("froze %d dynamic same-padding layers for %d px", len(sizes), size_px)
    return model


def nhwc_input(model):
    """``model`` (NCHW float input) wrapped to take NHWC; the output is unchanged."""
    import torch

    class NHWCInput(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x.permute(0, 3, 1, 2))

    return NHWCInput(model.eval()).eval()
