"""Tiny random-weight models with the release models' contracts, for tests and fixtures.

They convert in seconds, yet use the ops that matter for conversion (conv, batch norm, SiLU, squeeze-excite
style gating, bilinear upsampling, global pooling, linear, L2 normalisation).
"""

from __future__ import annotations

from coinvision.sdk.model_meta import ModelMetadata
from coinvision.sdk.preprocess import InputSpec

__all__ = [
    "TINY_EMBEDDING_DIM",
    "TINY_SIZE_PX",
    "tiny_embedder",
    "tiny_segmenter",
    "write_tiny_checkpoints",
    "write_tiny_models",
]

TINY_SIZE_PX = 64
TINY_EMBEDDING_DIM = 64


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
    from pathlib import Path

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
    from pathlib import Path

    import torch
    from coinvision.trainer.checkpoint import Checkpoint, save_checkpoint
    from coinvision.trainer.config_io import config_to_dict

    out_dir = Path(out_dir)
    paths = {}
    torch.manual_seed(seed)
    if "segmenter" in kinds:
        from coinvision.trainer.segmenter import SegmenterConfig, build_segmenter

        cfg = SegmenterConfig(encoder=TINY_SEGMENTER_ENCODER, size_px=TINY_SIZE_PX, decoder_channels=(16, 8, 8, 8, 8))
        model = build_segmenter(cfg).eval()
        paths["segmenter"] = save_checkpoint(
            out_dir / "segmenter.pt", Checkpoint("segmenter", config_to_dict(cfg), model.state_dict(), epoch=1)
        )
    if "embedder" in kinds:
        from coinvision.trainer.embedder import EmbedderConfig, build_embedder

        cfg = EmbedderConfig(backbone=TINY_EMBEDDER_BACKBONE, size_px=TINY_SIZE_PX, head_hidden_dims=(32,),
                             embedding_dim=TINY_EMBEDDING_DIM)
        model = build_embedder(cfg).eval()
        paths["embedder"] = save_checkpoint(
            out_dir / "embedder.pt", Checkpoint("embedder", config_to_dict(cfg), model.state_dict(), epoch=1)
        )
    return paths
