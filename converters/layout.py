"""The one place the input layout changes: NHWC-input wrapper for the phone formats (TFLite, Core ML).

PyTorch and ONNX take NCHW. Phones hand over interleaved RGB pixels (Android bitmaps, iOS pixel buffers), so
the TFLite and Core ML files take NHWC and transpose inside the graph. Each exported file's metadata states its
layout (``InputSpec.layout``, see ``metadata.FORMAT_LAYOUT``); ``preprocess.to_model_input`` produces it.
Normalisation (``(x/255 - mean) / std``) stays outside every model, stated in the metadata.
"""

from __future__ import annotations

__all__ = ["nhwc_input"]


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
