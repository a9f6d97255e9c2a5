"""Tiny random-weight models with the release models' contracts, for tests and fixtures.

They convert in seconds, yet use the ops that matter for conversion (conv, batch norm, SiLU, squeeze-excite
style gating, bilinear upsampling, global pooling, linear, L2 normalisation).

The exported pair is committed under ``tests/assets/tiny_models`` (with golden outputs), so SDK, server and CLI
tests run without torch. Regenerate it after changing a model here::

    python -m coinvision.converters.tiny_models --out tests/assets/tiny_models
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from coinvision.sdk.images import load_image
from coinvision.sdk.model_meta import ModelMetadata
from coinvision.sdk.preprocess import InputSpec, letterbox

__all__ = [
    "GOLDEN_FILE",
    "TINY_EMBEDDING_DIM",
    "TINY_SIZE_PX",
    "golden_square",
    "main",
    "tiny_embedder",
    "tiny_segmenter",
    "write_golden_outputs",
    "write_tiny_checkpoints",
    "write_tiny_models",
]

TINY_SIZE_PX = 64
TINY_EMBEDDING_DIM = 64
GOLDEN_FILE = "golden.npz"
# The golden input: one real phone photo of the bundled sample, letterboxed to the tiny input size.
GOLDEN_PHOTO = Path(__file__).resolve().parents[1] / "examples" / "sample_coins" / "euro_phone" / "images"


def _fingerprint(model) -> str:
    from coinvision.trainer.checkpoint import fingerprint_state_dict

    # 0-d tensors (BatchNorm's num_batches_tracked) as 1-element vectors: same bytes, hashable everywhere.
    return fingerprint_state_dict({k: v.reshape(-1) for k, v in model.state_dict().items()})


def _blocks():
    import torch
    from torch import nn

    class SqueezeExcite(nn.Module):
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.fc = nn.Conv2d(channels, channels, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.sigmoid(self.fc(x.mean(dim=(2, 3), keepdim=True)))

    def stage(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.SiLU(),
            SqueezeExcite(cout),
        )

    return stage


def tiny_segmenter(seed: int = 0, size_px: int = TINY_SIZE_PX, threshold: float = 0.5):
    """``(model, metadata)``: NCHW normalised input -> mask logits Nx1xHxW."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    stage = _blocks()

    class TinySegmenter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc1 = stage(3, 8, 2)
            self.enc2 = stage(8, 16, 2)
            self.head = nn.Conv2d(16 + 8, 1, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f1 = self.enc1(x)
            # fixed scale factors (as smp's U-Net decoder uses): shape-derived sizes trip Core ML's tracer
            f2 = F.interpolate(self.enc2(f1), scale_factor=2.0, mode="bilinear", align_corners=False)
            logits = self.head(torch.cat([f1, f2], dim=1))
            return F.interpolate(logits, scale_factor=2.0, mode="bilinear", align_corners=False)

    torch.manual_seed(seed)
    model = TinySegmenter().eval()
    meta = ModelMetadata(
        name="segmenter",
        architecture="tiny-conv-seg",
        fingerprint=_fingerprint(model),
        input=InputSpec(size_px=size_px),
        output="mask_logits",
        threshold=threshold,
        runtime_format="torch",
    )
    return model, meta


def tiny_embedder(seed: int = 0, size_px: int = TINY_SIZE_PX, embedding_dim: int = TINY_EMBEDDING_DIM):
    """``(model, metadata)``: NCHW normalised input -> L2-normalised NxD embeddings."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    stage = _blocks()

    class TinyEmbedder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(stage(3, 8, 2), stage(8, 16, 2), stage(16, 32, 2))
            self.fc = nn.Linear(32, embedding_dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.normalize(self.fc(self.features(x).mean(dim=(2, 3))), dim=1)

    torch.manual_seed(seed + 1)
    model = TinyEmbedder().eval()
    meta = ModelMetadata(
        name="embedder",
        architecture="tiny-conv-emb",
        fingerprint=_fingerprint(model),
        input=InputSpec(size_px=size_px),
        output="embedding",
        embedding_dim=embedding_dim,
        l2_normalized=True,
        threshold=None,
        runtime_format="torch",
    )
    return model, meta


def write_tiny_models(out_dir, *, formats: tuple[str, ...] = ("onnx", "tflite")):
    """Export both tiny models as ``segmenter.<fmt>`` / ``embedder.<fmt>`` (+ sidecars) into ``out_dir``."""

    from coinvision.converters.onnx_export import export_onnx
    from coinvision.converters.tflite_export import export_tflite

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for model, meta in (tiny_segmenter(), tiny_embedder()):
        if "onnx" in formats:
            export_onnx(model, meta, out_dir / f"{meta.name}.onnx")
        if "tflite" in formats:
            export_tflite(model, meta, out_dir / f"{meta.name}.tflite")
    return out_dir


TINY_SEGMENTER_ENCODER = "tu-mobilenetv2_035"
TINY_EMBEDDER_BACKBONE = "mobilenetv2_035"


def write_tiny_checkpoints(out_dir, *, seed: int = 0, kinds: tuple[str, ...] = ("segmenter", "embedder")):
    """Random-weight TRAINER checkpoints with the release architectures at toy size (smp U-Net on
    ``mobilenetv2_035``, timm ``mobilenetv2_035`` + FC -> 64), 64 px: what ``coinvision export`` reads.
    Returns ``{kind: path}``."""

    import torch
    from coinvision.trainer.checkpoint import Checkpoint, save_checkpoint
    from coinvision.trainer.config_io import config_to_dict

    out_dir = Path(out_dir)
    paths = {}
    torch.manual_seed(seed)
    if "segmenter" in kinds:
        from coinvision.trainer.seg_config import SegmenterConfig
        from coinvision.trainer.seg_model import build_segmenter

        cfg = SegmenterConfig(encoder=TINY_SEGMENTER_ENCODER, size_px=TINY_SIZE_PX, decoder_channels=(16, 8, 8, 8, 8))
        model = build_segmenter(cfg).eval()
        paths["segmenter"] = save_checkpoint(
            out_dir / "segmenter.pt", Checkpoint("segmenter", config_to_dict(cfg), model.state_dict(), epoch=1)
        )
    if "embedder" in kinds:
        from coinvision.trainer.emb_config import EmbedderConfig
        from coinvision.trainer.emb_model import build_embedder

        cfg = EmbedderConfig(backbone=TINY_EMBEDDER_BACKBONE, size_px=TINY_SIZE_PX, head_hidden_dims=(32,),
                             embedding_dim=TINY_EMBEDDING_DIM)
        model = build_embedder(cfg).eval()
        paths["embedder"] = save_checkpoint(
            out_dir / "embedder.pt", Checkpoint("embedder", config_to_dict(cfg), model.state_dict(), epoch=1)
        )
    return paths


def golden_square(photo_dir: Path = GOLDEN_PHOTO, size_px: int = TINY_SIZE_PX) -> np.ndarray:
    """The first photo (sorted) under ``photo_dir`` letterboxed to ``size_px``: uint8 ``SxSx3`` RGB."""
    photos = sorted(photo_dir.rglob("*.jpg"))
    if not photos:
        raise FileNotFoundError(f"no .jpg photo under {photo_dir}; pass a folder of photos (examples/sample_coins)")
    return letterbox(load_image(photos[0]), size_px)[0]


def write_golden_outputs(out_dir, square: np.ndarray | None = None) -> Path:
    """``golden.npz`` in ``out_dir``: the input ``square`` and what PyTorch computes from it (``segmenter``: mask
    logits SxS, ``embedder``: the unit vector). Exported files must reproduce these within float tolerance."""
    from coinvision.trainer.torch_runtime import torch_predictor

    square = golden_square() if square is None else square
    outputs = {meta.name: torch_predictor(model, meta.input)(square).astype(np.float32)
               for model, meta in (tiny_segmenter(), tiny_embedder())}
    path = Path(out_dir) / GOLDEN_FILE
    np.savez_compressed(path, square=square, segmenter=outputs["segmenter"][0], embedder=outputs["embedder"])
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m coinvision.converters.tiny_models",
        description="Export the tiny segmenter + embedder (ONNX, TFLite, sidecars) and their golden outputs.",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write (tests/assets/tiny_models)")
    args = parser.parse_args(argv)
    out = write_tiny_models(args.out)
    write_golden_outputs(out)
    for path in sorted(out.iterdir()):
        print(f"{path.stat().st_size:>8}  {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
