"""Recovering the release embedder's and segmenter's PyTorch weights from their ONNX files: the same vectors (and
logits) on a real photo, a checkpoint the trainer loads, and typed errors for a missing file or a config that does
not describe it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml
from coinvision.converters.onnx_recovery import recover_embedder, recover_segmenter
from coinvision.sdk import Recognizer
from coinvision.sdk.errors import ModelLoadError
from coinvision.sdk.images import load_image
from coinvision.sdk.model_meta import ModelMetadata
from coinvision.sdk.preprocess import letterbox, to_model_input
from coinvision.trainer.emb_model import load_embedder
from coinvision.trainer.seg_model import POSTPROCESS_KEYS, load_segmenter

RELEASE = Path(__file__).resolve().parents[2] / "models" / "release"
CONFIG = RELEASE / "training" / "embedder.train_config.yaml"
SEG_CONFIG = RELEASE / "training" / "segmenter.train_config.yaml"


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


def test_recovered_segmenter_gives_the_files_logits_on_a_real_photo_and_its_post_processing(
        tmp_path: Path, sample_root: Path) -> None:
    """The release U-Net (EfficientNet-Lite0 encoder, every BatchNorm folded at export, int8-stored weights): the
    checkpoint computes the file's logits, and re-exporting it would write the post-processing the file says (the
    training config predates some of it: views, tiles)."""
    onnx_path = RELEASE / "segmenter.onnx"
    meta = ModelMetadata.read_sidecar(onnx_path)
    report = recover_segmenter(onnx_path, SEG_CONFIG, tmp_path / "seg.pt")
    assert report.source_fingerprint == meta.fingerprint
    assert report.convolutions == 59 and report.max_abs_diff < 1e-3 < report.max_abs_logit
    model, cfg, ckpt = load_segmenter(tmp_path / "seg.pt")
    assert ckpt.fingerprint == report.fingerprint
    stated = {k: meta.extra[k] for k in POSTPROCESS_KEYS if k in meta.extra}
    assert set(stated) >= {"views", "tile_frac", "split_touching"}
    assert {k: getattr(cfg, k) for k in stated} == stated and cfg.threshold == meta.threshold
    photo = next((sample_root / "euro_phone").rglob("*.jpg"))
    x = to_model_input(letterbox(load_image(photo), meta.input.size_px)[0], meta.input)
    want = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() < 1e-3


def test_segmenter_missing_file_and_foreign_config_are_model_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        recover_segmenter(tmp_path / "nope.onnx", SEG_CONFIG, tmp_path / "a.pt")
    wider = yaml.safe_load(SEG_CONFIG.read_text()) | {"decoder_channels": [128, 64, 32, 16, 16]}
    (tmp_path / "wider.yaml").write_text(yaml.safe_dump(wider))
    with pytest.raises(ModelLoadError, match="training config"):
        recover_segmenter(RELEASE / "segmenter.onnx", tmp_path / "wider.yaml", tmp_path / "b.pt")
    assert not list(tmp_path.glob("*.pt"))


def test_recovered_segmenter_batchnorms_measured_on_a_batch_train_as_the_file_computes(
        tmp_path: Path, sample_root: Path) -> None:
    """What fine-tuning a recovered segmenter needs (``bn_calibration_samples``): after the BN statistics are measured
    on a batch, eval mode still computes the file's logits, and train mode (batch statistics) on that batch computes
    them too; with the folded identities train mode is another function."""
    from coinvision.trainer.tflite_port import conv_bn_pairs, recalibrate_batchnorm

    recover_segmenter(RELEASE / "segmenter.onnx", SEG_CONFIG, tmp_path / "seg.pt")
    model, cfg, _ = load_segmenter(tmp_path / "seg.pt")
    photos = sorted((sample_root / "euro_phone").rglob("*.jpg"))[:8]
    batch = torch.from_numpy(np.concatenate([to_model_input(letterbox(load_image(p), cfg.size_px)[0], cfg.input_spec)
                                             for p in photos]))
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.momentum = 0.0  # train-mode forward passes below leave the statistics where they are
    with torch.no_grad():
        shipped = model.eval()(batch)
        folded_train = model.train()(batch)
        model.load_state_dict(recalibrate_batchnorm(model, conv_bn_pairs(model), [batch]))
        calibrated_eval = model.eval()(batch)
        calibrated_train = model.train()(batch)
    assert len(conv_bn_pairs(model)) == 58  # every convolution but the head's
    assert (calibrated_eval - shipped).abs().max() < 1e-3
    assert (calibrated_train - shipped).abs().max() < 1e-2 * shipped.abs().max()
    assert ((folded_train > 0) != (shipped > 0)).float().mean() > 0.05
