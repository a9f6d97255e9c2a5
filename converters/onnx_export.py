"""PyTorch -> ONNX (fp32, NCHW, dynamic batch), checked with ``onnx.checker`` and metadata embedded."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from coinvision.converters.metadata import embed_onnx_metadata, for_runtime
from coinvision.sdk.errors import ConversionError
from coinvision.sdk.model_meta import ModelMetadata

__all__ = ["INPUT_NAME", "ONNX_OPSET", "export_onnx"]

log = logging.getLogger(__name__)

ONNX_OPSET = 17
INPUT_NAME = "input"


def export_onnx(model, meta: ModelMetadata, out_path: str | Path, *, opset: int = ONNX_OPSET) -> Path:
    """Export ``model`` (NCHW float input, as in ``meta.input``) to one self-contained ``.onnx`` file.

    Writes the sidecar ``<file>.meta.json`` too. Returns the path.
    """
    import onnx
    import torch

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    size = meta.input.size_px
    example = torch.zeros(1, 3, size, size)
    model = model.eval()
    tmp = out_path.with_name(out_path.name + ".tmp.onnx")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            # The TorchScript-based exporter writes one self-contained file and handles every op our
            # backbones use; the dynamo exporter splits weights into .data files by default.
            torch.onnx.export(
                model,
                (example,),
                str(tmp),
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[meta.output],
                dynamic_axes={INPUT_NAME: {0: "batch"}, meta.output: {0: "batch"}},
                do_constant_folding=True,
                dynamo=False,
            )
        onnx.checker.check_model(str(tmp), full_check=True)
    except Exception as exc:  # the exporter raises many unrelated types; report them all the same way
        tmp.unlink(missing_ok=True)
        raise ConversionError(f"ONNX export of {meta.name} failed: {type(exc).__name__}: {exc}") from exc
    file_meta = for_runtime(meta, "onnx", "fp32", opset=opset)
    embed_onnx_metadata(tmp, file_meta)
    tmp.replace(out_path)
    file_meta.write_sidecar(out_path)
    log.info("wrote %s (%.1f MB)", out_path, out_path.stat().st_size / 1e6)
    return out_path
