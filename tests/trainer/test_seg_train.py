"""The segmenter trains for real: one step on the sample's auto-labelled photos through ``coinvision train
segmenter``, then ``--resume`` continues the same run."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import yaml
from coinvision.cli.main import main
from coinvision.trainer.checkpoint import load_checkpoint
from coinvision.trainer.seg_labels import label_datasets
from coinvision.trainer.seg_model import load_segmenter


@pytest.fixture(scope="module")
def tiny_seg_config(sample_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, tiny config: the sample's euro_phone photos auto-labelled, its backgrounds, a 64 px U-Net."""
    root = tmp_path_factory.mktemp("seg_train")
    labelled, _ = label_datasets([sample_root / "euro_phone"], root / "labels", progress=False)
    assert len(labelled) >= 30
    config = {
        "encoder": "tu-mobilenetv2_035", "decoder_channels": [32, 16, 8, 8, 8], "size_px": 64,
        "data_roots": [str(sample_root / "euro_phone")], "backgrounds_root": str(sample_root / "backgrounds"),
        "labels_dir": str(root / "labels"), "epochs": 1, "steps_per_epoch": 1, "batch_size": 2,
        "val_synthetic": 4, "val_real": 4, "out_dir": str(root / "run"),
    }
    path = root / "segmenter_tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _history(out_dir: Path) -> list[dict]:
    return json.loads((out_dir / "history.json").read_text())


def test_one_step_writes_checkpoints_history_and_resumes(tiny_seg_config: Path, capsys) -> None:
    out_dir = Path(yaml.safe_load(tiny_seg_config.read_text())["out_dir"])
    assert main(["train", "segmenter", "--config", str(tiny_seg_config)]) == 0
    assert "best checkpoint" in capsys.readouterr().out

    first = _history(out_dir)
    assert [row["epoch"] for row in first] == [1]
    assert math.isfinite(first[0]["train_dice_loss"]) and 0.0 <= first[0]["train_dice_loss"] <= 1.0
    for key in ("synthetic_iou@0.5", "real_iou@0.5"):
        assert 0.0 <= first[0][key] <= 1.0
    assert (out_dir / "history.csv").read_text().splitlines()[0].startswith("epoch,train_dice_loss,lr,")
    assert (out_dir / "curves.png").stat().st_size > 0
    assert (out_dir / "config.yaml").is_file()
    _model, cfg, ckpt = load_segmenter(out_dir / "best.pt")
    assert (cfg.size_px, ckpt.epoch) == (64, 1)
    last = load_checkpoint(out_dir / "last.pt", expected_kind="segmenter")
    assert {"optimizer", "scheduler", "history", "best_score"} <= set(last.training_state)

    assert main(["train", "segmenter", "--config", str(tiny_seg_config), "--set", "epochs=2", "--resume"]) == 0
    second = _history(out_dir)
    assert [row["epoch"] for row in second] == [1, 2]
    assert second[0] == first[0]  # the resumed run kept epoch 1 as it was and only trained epoch 2
    assert math.isfinite(second[1]["train_dice_loss"])
    resumed = load_checkpoint(out_dir / "last.pt", expected_kind="segmenter")
    assert resumed.epoch == 2
    assert resumed.training_state["scheduler"]["last_epoch"] == 2  # one step per epoch, counted across the resume


def test_seg_model_builds_without_the_training_stack() -> None:
    """Converters build and load the segmenter from ``seg_model``: importing it pulls in no albumentations."""
    import subprocess

    code = ("import sys; import coinvision.trainer.seg_model, coinvision.trainer.emb_model; "
            "bad = [m for m in ('albumentations', 'coinvision.trainer.seg_scenes', 'coinvision.trainer.emb_data') "
            "if m in sys.modules]; print(bad); raise SystemExit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_segmenter_input_is_normalised_as_its_encoder_was_pretrained() -> None:
    from coinvision.trainer.config_io import resolve_config
    from coinvision.trainer.seg_config import SegmenterConfig

    mnv2 = resolve_config(SegmenterConfig, overrides={"encoder": "tu-mobilenetv2_100"}).input_spec
    lite = resolve_config(SegmenterConfig, overrides={"encoder": "tu-tf_efficientnet_lite0", "size_px": 160}).input_spec
    assert (mnv2.mean, mnv2.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # the shipped segmenter's
    assert (lite.mean, lite.std, lite.size_px) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 160)  # (x - 127.5) / 127.5


def test_fine_tune_from_a_checkpoint_keeps_batchnorm_statistics_and_trains_the_chosen_loss(
        tiny_seg_config: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``init_checkpoint`` + ``freeze_bn`` (fine-tuning a recovered release file, whose BatchNorms are folded
    identities) with Dice + Lovasz: every weight starts from the checkpoint, the BN statistics never move, the
    convolutions do, and the history names the loss that trained."""
    import torch

    start_dir, tune_dir = tmp_path / "start", tmp_path / "tune"
    assert main(["train", "segmenter", "--config", str(tiny_seg_config), "--set", f"out_dir={start_dir}"]) == 0
    start = load_checkpoint(start_dir / "best.pt", expected_kind="segmenter")
    assert main(["train", "segmenter", "--config", str(tiny_seg_config), "--set", f"out_dir={tune_dir}",
                 f"init_checkpoint={start_dir / 'best.pt'}", "freeze_bn=true", "loss=dice+lovasz", "seed=1"]) == 0
    tuned = load_checkpoint(tune_dir / "last.pt", expected_kind="segmenter")
    stats = [k for k in start.state_dict if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(start.state_dict[k], tuned.state_dict[k]) for k in stats)
    convs = [k for k in start.state_dict if k.endswith("conv.weight") or k.endswith("conv_pw.weight")]
    assert any(not torch.equal(start.state_dict[k], tuned.state_dict[k]) for k in convs)
    row = _history(tune_dir)[0]
    assert "train_dice_lovasz_loss" in row and "train_dice_loss" not in row
    assert math.isfinite(row["train_dice_lovasz_loss"]) and row["train_dice_lovasz_loss"] > 0.0

    # statistics measured on the training mix first (a recovered checkpoint's folded BNs), then trained in train mode
    # (what the measuring does to the function: tests/converters/test_onnx_recovery.py)
    calibrated_dir = tmp_path / "calibrated"
    with caplog.at_level("INFO", logger="coinvision.trainer.seg_train"):
        assert main(["train", "segmenter", "--config", str(tiny_seg_config), "--set", f"out_dir={calibrated_dir}",
                     f"init_checkpoint={start_dir / 'best.pt'}", "bn_calibration_samples=4", "loss=lovasz"]) == 0
    assert "BatchNorm statistics measured on 4 training samples" in caplog.text
    assert "train_lovasz_loss" in _history(calibrated_dir)[0]


def test_decoder_fine_tune_keeps_the_encoder_on_pipeline_views(tiny_seg_config: Path, tmp_path: Path) -> None:
    """``frozen_modules=[encoder]`` with every synthetic sample a pass view (``pass_view_p=1``): every encoder
    tensor, BatchNorm statistics included, stays the checkpoint's; the decoder trains."""
    import torch

    start_dir, tune_dir = tmp_path / "start", tmp_path / "tune"
    assert main(["train", "segmenter", "--config", str(tiny_seg_config), "--set", f"out_dir={start_dir}"]) == 0
    assert main(["train", "segmenter", "--config", str(tiny_seg_config), "--set", f"out_dir={tune_dir}",
                 f"init_checkpoint={start_dir / 'best.pt'}", "frozen_modules=[encoder]", "pass_view_p=1.0",
                 "pass_view_scene_px=192", "real_train_frac=0.0", "steps_per_epoch=2", "lr=0.01", "seed=1"]) == 0
    start = load_checkpoint(start_dir / "best.pt", expected_kind="segmenter").state_dict
    tuned = load_checkpoint(tune_dir / "last.pt", expected_kind="segmenter").state_dict
    encoder = [k for k in start if k.startswith("encoder.")]
    assert encoder and all(torch.equal(start[k], tuned[k]) for k in encoder)
    decoder = [k for k in start if k.startswith("decoder.") and k.endswith(".weight")]
    assert any(not torch.equal(start[k], tuned[k]) for k in decoder)

    from coinvision.sdk.errors import ConfigError
    from coinvision.trainer.config_io import resolve_config
    from coinvision.trainer.seg_config import SegmenterConfig
    from coinvision.trainer.seg_train import train_segmenter

    typo = resolve_config(SegmenterConfig, tiny_seg_config, {"frozen_modules": ["decoder.block.0"],
                                                            "out_dir": str(tmp_path / "typo")})
    with pytest.raises(ConfigError, match=r"frozen_modules \['decoder.block.0'\]: no such submodule"):
        train_segmenter(typo, progress=False)
    assert not (tmp_path / "typo" / "last.pt").exists()


def test_init_checkpoint_of_another_u_net_is_a_model_load_error(tiny_seg_config: Path, tmp_path: Path) -> None:
    from coinvision.sdk.errors import ModelLoadError
    from coinvision.trainer.config_io import resolve_config
    from coinvision.trainer.seg_config import SegmenterConfig
    from coinvision.trainer.seg_train import train_segmenter

    start_dir = tmp_path / "start"
    assert main(["train", "segmenter", "--config", str(tiny_seg_config), "--set", f"out_dir={start_dir}"]) == 0
    wider = resolve_config(SegmenterConfig, tiny_seg_config, {
        "decoder_channels": [64, 16, 8, 8, 8], "init_checkpoint": str(start_dir / "best.pt"),
        "out_dir": str(tmp_path / "wider")})
    with pytest.raises(ModelLoadError, match=r"init_checkpoint .*same encoder and decoder_channels"):
        train_segmenter(wider, progress=False)
    assert not (tmp_path / "wider" / "best.pt").exists()


def test_fine_tuning_settings_are_checked() -> None:
    from coinvision.sdk.errors import ConfigError
    from coinvision.trainer.config_io import resolve_config
    from coinvision.trainer.seg_config import SegmenterConfig

    with pytest.raises(ConfigError, match=r"bn_calibration_samples=64: .*only with an init_checkpoint"):
        resolve_config(SegmenterConfig, overrides={"bn_calibration_samples": 64})
    with pytest.raises(ConfigError, match="loss='focal'"):
        resolve_config(SegmenterConfig, overrides={"loss": "focal"})


def test_distillation_adds_the_teachers_soft_map_on_real_photos(tiny_seg_config: Path, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """``distill_checkpoint``: the same fine-tune with the teacher's term trains other weights than without it; a
    teacher of another input size and a weight of 0 are refused, named."""
    import torch
    from coinvision.sdk.errors import ConfigError
    from coinvision.trainer.config_io import resolve_config
    from coinvision.trainer.seg_config import SegmenterConfig
    from coinvision.trainer.seg_train import train_segmenter

    start_dir = tmp_path / "start"
    assert main(["train", "segmenter", "--config", str(tiny_seg_config), "--set", f"out_dir={start_dir}"]) == 0
    teacher = start_dir / "best.pt"
    common = [f"init_checkpoint={teacher}", "real_train_frac=1.0", "steps_per_epoch=2", "lr=0.01", "seed=1"]
    assert main(["train", "segmenter", "--config", str(tiny_seg_config), "--set", f"out_dir={tmp_path / 'plain'}",
                 *common]) == 0
    with caplog.at_level("INFO", logger="coinvision.trainer.seg_train"):
        assert main(["train", "segmenter", "--config", str(tiny_seg_config), "--set",
                     f"out_dir={tmp_path / 'distil'}", *common, f"distill_checkpoint={teacher}",
                     "distill_weight=5.0"]) == 0
    assert "real photos also learn the soft map of" in caplog.text
    assert "train_dice_distill_loss" in _history(tmp_path / "distil")[0]
    plain = load_checkpoint(tmp_path / "plain" / "last.pt", expected_kind="segmenter").state_dict
    distil = load_checkpoint(tmp_path / "distil" / "last.pt", expected_kind="segmenter").state_dict
    assert any(not torch.equal(plain[k], distil[k]) for k in plain if k.endswith(".weight"))

    other_size = resolve_config(SegmenterConfig, tiny_seg_config, {"size_px": 96, "distill_checkpoint": str(teacher),
                                                                   "out_dir": str(tmp_path / "other")})
    with pytest.raises(ConfigError, match=r"distill_checkpoint .*same size_px"):
        train_segmenter(other_size, progress=False)
    with pytest.raises(ConfigError, match=r"distill_weight=0.0: must be > 0"):
        resolve_config(SegmenterConfig, overrides={"distill_weight": 0.0})
