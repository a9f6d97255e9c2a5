"""Run by ``test_distributed.py`` (plain, or under ``torchrun``): a few steps of each trainer on the bundled
photos, each rank writing the fingerprint of its final weights to ``<root>/fingerprints/<kind>.rank<r>``.

    python tests/trainer/dist_train_script.py ROOT LABELS_DIR
    torchrun --nproc_per_node 2 tests/trainer/dist_train_script.py ROOT LABELS_DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from coinvision.trainer.checkpoint import fingerprint_state_dict
from coinvision.trainer.emb_config import EmbedderConfig
from coinvision.trainer.emb_train import train_embedder
from coinvision.trainer.seg_config import SegmenterConfig
from coinvision.trainer.seg_train import train_segmenter
from coinvision.trainer.train_loop import TrainingRun
from torch import nn

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sample_coins"


def seg_config(root: Path, labels: Path) -> SegmenterConfig:
    return SegmenterConfig(encoder="tu-mobilenetv2_035", decoder_channels=(32, 16, 8, 8, 8), size_px=64,
                           data_roots=(str(SAMPLE / "euro_phone"),), backgrounds_root=str(SAMPLE / "backgrounds"),
                           labels_dir=str(labels), epochs=2, steps_per_epoch=2, batch_size=2, val_synthetic=4,
                           val_real=4, out_dir=str(root / "seg"), num_threads=1)


def emb_config(root: Path) -> EmbedderConfig:
    """Frozen backbone for epoch 1 then all of it (the DDP wrapper is rebuilt when that changes), m-per-class."""
    return EmbedderConfig(backbone="mobilenetv2_035", size_px=64, head_hidden_dims=(), head_init="pca",
                          batch_size=8, epochs=2, background_removal=False, num_threads=1, freeze_backbone_epochs=1,
                          steps_per_epoch=2, sampler="m_per_class", m_per_class=4, out_dir=str(root / "emb"),
                          crop_cache_dir=str(root / "cache"),
                          data_roots=(str(SAMPLE / "coins211"), str(SAMPLE / "euro_phone")))


def main(root: Path, labels: Path) -> None:
    rank = int(os.environ.get("RANK", "0"))
    prints = root / "fingerprints"
    prints.mkdir(parents=True, exist_ok=True)
    original = TrainingRun.end_epoch

    def end_epoch(self: TrainingRun, model: nn.Module) -> str | None:
        out = original(self, model)
        # this rank's own weights after the epoch (rank 0's buffers, as the loop leaves them)
        (prints / f"{self.kind}.rank{rank}").write_text(fingerprint_state_dict(model.state_dict()))
        return out

    TrainingRun.end_epoch = end_epoch  # type: ignore[method-assign]
    torch.set_num_threads(1)
    train_segmenter(seg_config(root, labels), progress=False)
    train_embedder(emb_config(root), progress=False)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
