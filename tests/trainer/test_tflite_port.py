from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from coinvision.sdk.errors import ConversionError, ModelLoadError
from coinvision.trainer import tflite_port as tp

REPO_ROOT = Path(__file__).parents[2]
SHARED_WEIGHTS = REPO_ROOT / ".." / "shared" / "weights"
TF2_TFLITE = SHARED_WEIGHTS / "tf2_mobilenet_v2_1.0_224_ptq.tflite"
SAMPLE_ROOT = REPO_ROOT / "examples" / "sample_coins"

needs_shared_weights = pytest.mark.skipif(not TF2_TFLITE.is_file(), reason=f"{TF2_TFLITE} not present")


# --- a tiny int8 TFLite model written by the test: checks dequantization and layouts without ../shared ---


# TensorFlow runs in a child process: importing it before timm/torchvision in one process segfaults (triton).
_BUILD_TINY_TFLITE = """
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

out = Path(sys.argv[1])
tf.random.set_seed(0)
inputs = tf.keras.Input((16, 16, 3))
x = tf.keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inputs)
x = tf.keras.layers.BatchNormalization()(x)
x = tf.keras.layers.ReLU(6.0)(x)
x = tf.keras.layers.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False)(x)
x = tf.keras.layers.BatchNormalization()(x)
x = tf.keras.layers.ReLU(6.0)(x)
x = tf.keras.layers.Conv2D(6, 1)(x)
x = tf.keras.layers.GlobalAveragePooling2D()(x)
model = tf.keras.Model(inputs, tf.keras.layers.Dense(5)(x))
rng = np.random.default_rng(0)
for layer in model.layers:  # a non-trivial batch norm to fold
    if isinstance(layer, tf.keras.layers.BatchNormalization):
        n = layer.gamma.shape[0]
        gamma, beta = rng.uniform(0.5, 1.5, n), rng.normal(0, 0.2, n)
        layer.set_weights([gamma, beta, rng.normal(0, 0.2, n), rng.uniform(0.5, 2, n)])
calib = [rng.uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32) for _ in range(16)]
converter = tf.lite.TFLiteConverter.from_keras_model(model)
converter.optimizations = [tf.lite.Optimize.DEFAULT]
converter.representative_dataset = lambda: ([c] for c in calib)
converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
converter.inference_input_type = tf.uint8
(out / "tiny.tflite").write_bytes(converter.convert())
x = rng.uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32)
np.save(out / "x.npy", x)
np.save(out / "expected.npy", model(x, training=False).numpy())
"""


@pytest.fixture(scope="module")
def tiny_tflite(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A tiny int8 TFLite (conv, depthwise, 1x1 conv, dense; BN folded) + its Keras float outputs."""
    if importlib.util.find_spec("tensorflow") is None:  # not importorskip: that would import it here
        pytest.skip("tensorflow is not installed")
    out = tmp_path_factory.mktemp("tflite")
    proc = subprocess.run(
        [sys.executable, "-c", _BUILD_TINY_TFLITE, str(out)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "tiny.tflite", np.load(out / "x.npy"), np.load(out / "expected.npy")


def _tf_same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    size = x.shape[-1]
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))


def test_read_tflite_convs_matches_keras_float_model(tiny_tflite: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, x_np, expected = tiny_tflite
    convs, input_q = tp.read_tflite_convs(path)
    assert [c.op for c in convs] == ["CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D", "FULLY_CONNECTED"]
    assert [c.weight.shape for c in convs] == [(8, 3, 3, 3), (8, 1, 3, 3), (6, 8, 1, 1), (5, 6, 1, 1)]
    assert [c.stride for c in convs] == [2, 2, 1, 1]
    assert input_q["scale"] > 0

    # Re-run the float network in PyTorch from the dequantized weights: layouts, biases and folding must be right.
    x = torch.from_numpy(x_np).permute(0, 3, 1, 2)
    stem, dw, pw, fc = ([torch.from_numpy(c.weight), torch.from_numpy(c.bias)] for c in convs)
    x = F.conv2d(_tf_same_pad(x, 3, 2), *stem, stride=2).clamp(0, 6)
    x = F.conv2d(_tf_same_pad(x, 3, 2), *dw, stride=2, groups=8).clamp(0, 6)
    x = F.conv2d(x, *pw).mean(dim=(2, 3))
    ours = x @ fc[0].flatten(1).T + fc[1]
    corr = np.corrcoef(ours.numpy().ravel(), expected.ravel())[0, 1]
    assert corr > 0.99, f"ported tiny network disagrees with Keras (corr {corr:.4f})"
    assert np.abs(ours.numpy() - expected).max() < 0.1 * np.abs(expected).max()


def test_port_mobilenetv2_refuses_a_model_of_another_shape(tiny_tflite: tuple[Path, np.ndarray, np.ndarray]) -> None:
    with pytest.raises(ConversionError, match="conv ops"):
        tp.port_mobilenetv2(tiny_tflite[0])


def test_read_tflite_convs_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"nope\.tflite"):
        tp.read_tflite_convs(tmp_path / "nope.tflite")


# --- pure mapping logic (no TFLite) ---


def test_fold_input_normalisation_equals_tflite_scaling_in_the_interior() -> None:
    rng = np.random.default_rng(0)
    weight, bias = rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)
    input_q = {"scale": 1 / 127.5, "zero_point": 127.0}
    u8 = rng.integers(0, 256, (1, 3, 8, 8)).astype(np.float64)
    x_tf = (u8 - input_q["zero_point"]) * input_q["scale"]
    mean, std = np.asarray(tp.IMAGENET_MEAN)[:, None, None], np.asarray(tp.IMAGENET_STD)[:, None, None]
    x_in = (u8 / 255.0 - mean) / std
    w2, b2 = tp._fold_input_normalisation(weight, bias, input_q)
    ref = F.conv2d(torch.from_numpy(x_tf), torch.from_numpy(weight), torch.from_numpy(bias))
    ours = F.conv2d(torch.from_numpy(x_in), torch.from_numpy(w2), torch.from_numpy(b2))
    torch.testing.assert_close(ours, ref)


def test_calibrate_batchnorm_keeps_eval_output_and_fixes_train_mode() -> None:
    import timm

    torch.manual_seed(0)
    sd = timm.create_model(tp.TIMM_ARCH, pretrained=False, num_classes=10).state_dict()
    for key in [k for k in sd if k.endswith(("running_var", "running_mean", ".bias"))]:  # a non-identity BN
        sd[key] = torch.rand_like(sd[key]) + (0.5 if key.endswith("running_var") else -0.5)
    batch = torch.randn(8, 3, 64, 64)
    calibrated = tp.calibrate_batchnorm(sd, batch)
    before, after = tp.create_ported_model(sd), tp.create_ported_model(calibrated)
    with torch.no_grad():
        torch.testing.assert_close(after(batch), before(batch), rtol=1e-4, atol=1e-4)
        assert not torch.equal(calibrated["bn1.running_mean"], sd["bn1.running_mean"])
        eval_out = after(batch)
        train_out = after.train()(batch)  # batch stats == calibration stats -> same function
    torch.testing.assert_close(train_out, eval_out, rtol=1e-3, atol=1e-3)


def test_every_timm_conv_has_the_batchnorm_of_its_block_layout() -> None:
    import timm

    model = timm.create_model(tp.TIMM_ARCH, pretrained=False)
    pairs = dict(tp.conv_bn_pairs(model))
    assert list(pairs) == [name for name, _ in tp.timm_convs(model)]
    # blocks.0 is a DepthwiseSeparableConv (dw -> bn1, pw -> bn2); later blocks are InvertedResidual
    assert {k: pairs[k] for k in ("conv_stem", "blocks.0.0.conv_dw", "blocks.0.0.conv_pw", "blocks.1.0.conv_pw",
                                  "blocks.1.0.conv_dw", "blocks.1.0.conv_pwl", "conv_head")} == {
        "conv_stem": "bn1", "blocks.0.0.conv_dw": "blocks.0.0.bn1", "blocks.0.0.conv_pw": "blocks.0.0.bn2",
        "blocks.1.0.conv_pw": "blocks.1.0.bn1", "blocks.1.0.conv_dw": "blocks.1.0.bn2",
        "blocks.1.0.conv_pwl": "blocks.1.0.bn3", "conv_head": "bn2"}


# --- the real shared weights ---


@pytest.fixture(scope="module")
def ported_tf2() -> dict[str, torch.Tensor]:
    return tp.port_mobilenetv2(TF2_TFLITE)


@pytest.mark.shared_data
@needs_shared_weights
def test_port_mobilenetv2_fills_every_timm_key_with_the_right_shape(ported_tf2: dict[str, torch.Tensor]) -> None:
    import timm

    reference = timm.create_model(tp.TIMM_ARCH, pretrained=False, num_classes=1000).state_dict()
    assert set(ported_tf2) == set(reference)
    for key, value in reference.items():
        assert ported_tf2[key].shape == value.shape, key
        assert torch.isfinite(ported_tf2[key].float()).all(), key
    assert not torch.equal(ported_tf2["conv_stem.weight"], reference["conv_stem.weight"])


@pytest.mark.shared_data
@needs_shared_weights
def test_port_mobilenetv2_agrees_with_tflite_on_sample_photos(ported_tf2: dict[str, torch.Tensor]) -> None:
    paths = tp.list_check_images(SAMPLE_ROOT, limit=12, seed=0)
    batch = tp.load_check_batch(paths)
    check = tp.compare_with_tflite(ported_tf2, TF2_TFLITE, batch, pad_type="same")
    assert check.n_images == 12
    assert check.top1_agreement >= 0.8, check
    assert check.top5_overlap >= 0.8, check
    assert check.logit_corr >= 0.99, check


@pytest.mark.shared_data
@needs_shared_weights
def test_port_and_check_writes_state_dict_timm_loads(tmp_path: Path) -> None:
    import timm

    out = tmp_path / "mnv2.pth"
    report = tp.port_and_check(TF2_TFLITE, out, check_images=SAMPLE_ROOT / "backgrounds", max_images=4)
    assert out.is_file() and out.with_suffix(".json").is_file()
    assert report["checks"][0]["n_images"] == 4
    model = timm.create_model(
        tp.TIMM_ARCH, pretrained=True, pretrained_cfg_overlay=dict(file=str(out)), num_classes=0, pad_type="same"
    )
    saved = torch.load(out, map_location="cpu")
    assert torch.equal(model.state_dict()["conv_stem.weight"], saved["conv_stem.weight"])
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 1280)


@pytest.mark.shared_data
@needs_shared_weights
def test_port_cli_warns_that_a_port_without_check_images_is_not_for_training(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from coinvision.cli.main import main

    assert main(["pretrained", "port-mobilenetv2", "--tflite", str(TF2_TFLITE), "--out", str(tmp_path / "a.pth")]) == 0
    assert "no --check-images, so BatchNorm stays identity" in capsys.readouterr().err
    assert main(["pretrained", "port-mobilenetv2", "--tflite", str(TF2_TFLITE), "--out", str(tmp_path / "b.pth"),
                 "--check-images", str(SAMPLE_ROOT / "backgrounds"), "--max-images", "4"]) == 0
    assert "warning" not in capsys.readouterr().err
