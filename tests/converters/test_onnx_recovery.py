"""Recovering the release embedder's PyTorch weights from its ONNX file: the same vectors on a real coin crop, a
checkpoint the trainer loads, and typed errors for a missing file or a config that does not describe it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml
from coinvision.converters.onnx_recovery import recover_embedder
from coinvision.sdk import Recognizer
from coinvision.sdk.errors import ModelLoadError
from coinvision.sdk.images import load_image
from coinvision.sdk.model_meta import ModelMetadata
from coinvision.sdk.preprocess import to_model_input
from coinvision.trainer.emb_model import load_embedder

RELEASE = Path(__file__).resolve().parents[2] / "models" / "release"
CONFIG = RELEASE / "training" / "embedder.train_config.yaml"


def test_recovered_checkpoint_embeds_a_real_crop_like_the_onnx_file(tmp_path: Path, sample_root: Path) -> None:
    """The release file: the v1 embedder, its companion (the v1 recipe retrained on the grown data) and the frozen
    EfficientNet-Lite0 branch, the whole vector whitened, weights stored as int8."""
    meta = ModelMetadata.read_sidecar(RELEASE / "embedder.onnx")
    report = recover_embedder(RELEASE / "embedder.onnx", CONFIG, tmp_path / "best.pt")
    assert report.source_fingerprint == meta.fingerprint
    # two MobileNetV2 + Lite0; the ONNX file stores its small constants as float16, the mix included (folded into
    # unnamed constants, so the recovered model takes the exact mix from the metadata): 4.8e-5 apart at most
    assert report.convolutions == 52 + 52 + 49 and report.max_abs_diff < 1e-4
    model, cfg, ckpt = load_embedder(tmp_path / "best.pt")
    assert ckpt.fingerprint == report.fingerprint and cfg.size_px == 160
    # what the file's metadata says about running it, and its branch, come back in the config
    assert (cfg.crop_interpolation, cfg.embed_rotations, cfg.unknown_threshold) == (
        meta.input.interpolation, meta.extra["embed_rotations"], meta.threshold)
    assert (cfg.branch_backbone, cfg.branch_weight, cfg.companion_weight, cfg.output_dim) == (
        meta.extra["branch_backbone"], meta.extra["branch_weight"], meta.extra["companion_weight"], meta.embedding_dim)
    assert cfg.whiten and meta.extra["whiten"] is True
    assert not torch.equal(model.whiten_projection, torch.eye(cfg.output_dim))  # the file's matrix, not the identity
    photo = next((sample_root / "euro_phone").rglob("*.jpg"))
    crop = Recognizer.from_dir(RELEASE, runtime="onnx", num_threads=1).embed(load_image(photo)).crop
    x = to_model_input(crop, meta.input)
    want = ort.InferenceSession(str(RELEASE / "embedder.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0]
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    # cosine, not the dot product: the file's part mix is stored as float16 (0.6323 for sqrt(0.4)), so its output is
    # 1.4e-4 short of unit length, which every runtime's re-normalisation removes (pipeline spec step 4)
    cosine = float(np.sum(got * want) / np.linalg.norm(got) / np.linalg.norm(want))
    assert cosine > 0.99999


def test_missing_file_and_foreign_config_are_model_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        recover_embedder(tmp_path / "nope.onnx", CONFIG, tmp_path / "a.pt")
    wider = yaml.safe_load(CONFIG.read_text()) | {"head_hidden_dims": [256]}
    (tmp_path / "wider.yaml").write_text(yaml.safe_dump(wider))
    with pytest.raises(ModelLoadError, match="head"):
        recover_embedder(RELEASE / "embedder.onnx", tmp_path / "wider.yaml", tmp_path / "b.pt")
    lite = yaml.safe_load(CONFIG.read_text()) | {"backbone": "tf_efficientnet_lite0", "pad_type": ""}
    (tmp_path / "lite.yaml").write_text(yaml.safe_dump(lite))
    with pytest.raises(ModelLoadError, match="training config"):
        recover_embedder(RELEASE / "embedder.onnx", tmp_path / "lite.yaml", tmp_path / "c.pt")
    assert not list(tmp_path.glob("*.pt"))
