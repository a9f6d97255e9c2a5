"""An exported embedder's ONNX file -> a trainer checkpoint that computes the same vectors.

The release embedder's training checkpoint lives under ``runs/`` (not in git), so a fresh clone cannot re-export,
ensemble, benchmark against or fine-tune the shipped weights. Its ``embedder.onnx`` holds them: ``torch.onnx``
folded every backbone BatchNorm into the convolution before it (a conv with a bias), and kept the head's names
(``head.*``). Rebuilding the training config's model and writing each folded conv into the conv + BatchNorm
pair it came from (``trainer.tflite_port.write_folded_conv``, as the MobileNetV2 port does: the BN becomes the
identity plus the folded bias) gives a model whose eval-mode output equals the ONNX file's. Train-mode BatchNorm
would re-normalise those convolutions, so fine-tuning from a recovered checkpoint starts from a slightly different
function than the shipped one. A frozen branch (``emb_model.FrozenBranch``, named by the file's metadata) is
unfolded the same way, its input scaling and PCA read by name, and so is a companion (a second trained embedder,
``companion.*``) and an output whitening (``whiten_*``); weights stored as float16 or int8 (``onnx_weights``) come
back as those rounded values, so the recovered model computes what the shipped file computes, not the float32
original.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from coinvision.sdk.errors import ModelLoadError
from coinvision.sdk.model_meta import ModelMetadata, sidecar_path
from coinvision.trainer.checkpoint import Checkpoint, save_checkpoint
from coinvision.trainer.config_io import config_to_dict, resolve_config
from coinvision.trainer.emb_config import EmbedderConfig
from coinvision.trainer.emb_model import KIND, build_embedder
from coinvision.trainer.seg_config import SegmenterConfig
from coinvision.trainer.seg_model import KIND as SEG_KIND
from coinvision.trainer.seg_model import POSTPROCESS_KEYS, build_segmenter
from coinvision.trainer.tflite_port import conv_bn_pairs, timm_convs, write_folded_conv

__all__ = ["RecoveredEmbedder", "RecoveredSegmenter", "recover_embedder", "recover_segmenter"]

log = logging.getLogger(__name__)
_CHECK_BATCH = 4


@dataclass(frozen=True)
class RecoveredEmbedder:
    out: Path
    source_fingerprint: str  # the ONNX metadata's (the original checkpoint's weights)
    fingerprint: str  # the recovered checkpoint's (its weights are stored differently: BN folded)
    convolutions: int
    max_abs_diff: float  # recovered PyTorch vs ONNX Runtime on seeded random inputs
    min_cosine: float


def _pipeline_values(shipped: ModelMetadata | None) -> dict[str, object]:
    """What the shipped file's metadata says about how it is run (crop resampling, rotated views, unknown threshold,
    a frozen branch), which the training config may predate: the recovered checkpoint re-exports to the same
    pipeline."""
    if shipped is None:
        return {}
    values: dict[str, object] = {"crop_interpolation": shipped.input.interpolation, "size_px": shipped.input.size_px,
                                 "unknown_threshold": shipped.threshold}
    for key in ("embed_rotations", "crop_margin_frac", "branch_backbone", "branch_weight", "companion_weight",
                "whiten"):
        if key in shipped.extra:
            values[key] = shipped.extra[key]
    return values


def _onnx_weights(graph) -> dict[str, np.ndarray]:
    """Initializers by name; a weight stored in fewer bytes (``onnx_weights``: float16 behind a ``Cast``, int8 behind
    ``Cast`` + ``Mul`` by its scales) under the name the float32 graph gave it, as ONNX Runtime restores it."""
    from onnx import numpy_helper

    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:  # the restoring nodes come first (onnx_weights.store_weights)
        if node.op_type == "Cast" and node.input[0] in weights:
            weights[node.output[0]] = weights[node.input[0]].astype(np.float32)
        elif node.op_type == "Mul" and all(name in weights for name in node.input):
            weights[node.output[0]] = (weights[node.input[0]] * weights[node.input[1]]).astype(np.float32)
    return weights


def _onnx_and_torch_outputs(onnx_path: Path, model: torch.nn.Module, size_px: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ONNX Runtime's, the model's)`` outputs on seeded random inputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((_CHECK_BATCH, 3, size_px, size_px)).astype(np.float32)
    want = session.run(None, {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    return want, got


def _save_recovered(kind: str, cfg: object, model: torch.nn.Module, onnx_path: Path, out_path: Path,
                    shipped: ModelMetadata | None, max_abs: float) -> tuple[str, Checkpoint]:
    """Write the checked model as a ``kind`` checkpoint: ``(the file's fingerprint, the checkpoint)``."""
    source = shipped.fingerprint if shipped is not None else ""
    ckpt = Checkpoint(kind=kind, config=config_to_dict(cfg), state_dict=model.state_dict(),
                      metrics={"recovered_from": str(onnx_path), "source_fingerprint": source,
                               "onnx_max_abs_diff": max_abs})
    save_checkpoint(out_path, ckpt)
    log.info("recovered %s -> %s (max |diff| %.2e)", onnx_path, out_path, max_abs)
    return source, ckpt


def recover_embedder(onnx_path: str | Path, config_path: str | Path, out_path: str | Path) -> RecoveredEmbedder:
    """Write ``out_path`` (a ``kind: embedder`` checkpoint of ``config_path``'s model, plus the frozen branch the
    file's metadata names) from ``onnx_path``, and check it: output within 1e-4 of ONNX Runtime. Typed errors name
    the file that does not fit. A file with float16-stored weights recovers those float16 values exactly."""
    import onnx

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if not onnx_path.is_file():
        raise ModelLoadError(f"{onnx_path} does not exist; pass the exported embedder.onnx (e.g. models/release)")
    shipped = ModelMetadata.read_sidecar(onnx_path) if sidecar_path(onnx_path).is_file() else None
    cfg = resolve_config(EmbedderConfig, config_path, {"pretrained_path": None})
    values = _pipeline_values(shipped)
    if values.get("branch_backbone") and shipped is not None:
        trained_dims = cfg.embedding_dim * (2 if values.get("companion_weight") else 1)
        values["branch_dims"] = shipped.embedding_dim - trained_dims
    cfg = dataclasses.replace(cfg, **values)
    model = build_embedder(cfg).eval()
    graph = onnx.load(str(onnx_path)).graph
    weights = _onnx_weights(graph)
    conv_nodes = [n for n in graph.node if n.op_type == "Conv"]
    # in the order the forward pass (and so the export) runs them
    backbones = [model.backbone] + [part.backbone for part in (model.companion, model.branch) if part is not None]
    convs = [(backbone, name, conv) for backbone in backbones for name, conv in timm_convs(backbone)]
    if len(conv_nodes) != len(convs):
        raise ModelLoadError(f"{onnx_path} has {len(conv_nodes)} convolutions, the model of {config_path} "
                             f"{len(convs)}: pass the training config the file was exported from")
    states = {id(b): b.state_dict() for b in backbones}
    bn_after = {id(b): dict(conv_bn_pairs(b)) for b in backbones}
    for i, (node, (backbone, name, conv)) in enumerate(zip(conv_nodes, convs, strict=True)):
        w = weights[node.input[1]]
        b = weights[node.input[2]] if len(node.input) > 2 else np.zeros(w.shape[0], np.float32)
        if tuple(w.shape) != tuple(conv.weight.shape):
            raise ModelLoadError(f"{onnx_path}: convolution {i} is {tuple(w.shape)}, the model's "
                                 f"{tuple(conv.weight.shape)}: pass the training config the file was exported from")
        bn = bn_after[id(backbone)].get(name)
        if bn is None:
            raise ModelLoadError(f"{name}: no BatchNorm after it in the MobileNetV2 / EfficientNet layout, so its "
                                 "folded ONNX export cannot be unfolded")
        write_folded_conv(states[id(backbone)], backbone, name, bn, w, b)
    for backbone in backbones:
        backbone.load_state_dict(states[id(backbone)])
    for prefix, module in (("head.", model.head), ("companion.", model.companion), ("branch.", model.branch)):
        if module is None:
            continue
        own = {name.removeprefix(prefix): torch.from_numpy(v.copy()) for name, v in weights.items()
               if name.startswith(prefix)}
        try:
            module.load_state_dict(own, strict=False)
        except RuntimeError as exc:
            raise ModelLoadError(f"{onnx_path}: {prefix[:-1]} weights do not fit the model of {config_path} "
                                 f"({exc})") from exc
        missing = {k for k in module.state_dict() if not k.endswith("num_batches_tracked")
                   and not k.startswith("backbone.")} - set(own)
        if missing:
            raise ModelLoadError(f"{onnx_path} lacks {prefix[:-1]} tensors {sorted(missing)}; was it exported by "
                                 "coinvision?")
    for name in ("whiten_mean", "whiten_projection") if model.whiten else ():
        if name not in weights:
            raise ModelLoadError(f"{onnx_path} lacks the {name} tensor its metadata (whiten) promises; was it "
                                 "exported by coinvision?")
        getattr(model, name).copy_(torch.from_numpy(weights[name].copy()))

    want, got = _onnx_and_torch_outputs(onnx_path, model, cfg.size_px)
    max_abs = float(np.abs(got - want).max())
    min_cos = float(np.min(np.sum(got * want, axis=1)))
    if max_abs > 1e-4:
        raise ModelLoadError(f"recovered model differs from {onnx_path} by {max_abs:.2e} (> 1e-4): the config "
                             f"{config_path} does not describe the exported network (backbone, pad_type, head)")
    source, ckpt = _save_recovered(KIND, cfg, model, onnx_path, out_path, shipped, max_abs)
    return RecoveredEmbedder(out=out_path, source_fingerprint=source, fingerprint=ckpt.fingerprint,
                             convolutions=len(convs), max_abs_diff=max_abs, min_cosine=min_cos)


@dataclass(frozen=True)
class RecoveredSegmenter:
    out: Path
    source_fingerprint: str
    fingerprint: str
    convolutions: int
    max_abs_diff: float  # recovered PyTorch logits vs ONNX Runtime on seeded random inputs
    max_abs_logit: float  # the scale those differences are on


_SEGMENTER_TOLERANCE = 1e-3  # logits (tens of units), float32 convolutions summed in another order


def recover_segmenter(onnx_path: str | Path, config_path: str | Path, out_path: str | Path) -> RecoveredSegmenter:
    """Write ``out_path`` (a ``kind: segmenter`` checkpoint of ``config_path``'s U-Net, with the post-processing the
    file's metadata says) from ``onnx_path``, and check it: logits within 1e-3 of ONNX Runtime. Every convolution
    of the U-Net (encoder and decoder) had its BatchNorm folded in at export; the BN registered after each one gets
    the identity plus the folded bias, and the head's convolution (no BN) takes weight and bias as they are. To
    fine-tune it, the trainer measures those BNs' statistics on its training mix first (``bn_calibration_samples``)
    or keeps them frozen (``freeze_bn``): train-mode BN on an identity would change the function."""
    import onnx

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if not onnx_path.is_file():
        raise ModelLoadError(f"{onnx_path} does not exist; pass the exported segmenter.onnx (e.g. models/release)")
    shipped = ModelMetadata.read_sidecar(onnx_path) if sidecar_path(onnx_path).is_file() else None
    values: dict[str, object] = {"pretrained_path": None}
    if shipped is not None:
        values.update({k: shipped.extra[k] for k in POSTPROCESS_KEYS if k in shipped.extra})
        values["threshold"] = shipped.threshold
        values.setdefault("split_touching", False)  # the metadata leaves a False out
    cfg = resolve_config(SegmenterConfig, config_path, values)
    model = build_segmenter(cfg).eval()
    graph = onnx.load(str(onnx_path)).graph
    weights = _onnx_weights(graph)
    conv_nodes = [n for n in graph.node if n.op_type == "Conv"]
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]  # forward order
    if len(conv_nodes) != len(convs):
        raise ModelLoadError(f"{onnx_path} has {len(conv_nodes)} convolutions, the U-Net of {config_path} "
                             f"{len(convs)}: pass the training config the file was exported from")
    state = model.state_dict()
    bn_after = dict(conv_bn_pairs(model))
    for i, (node, (name, conv)) in enumerate(zip(conv_nodes, convs, strict=True)):
        w = weights[node.input[1]]
        b = weights[node.input[2]] if len(node.input) > 2 else np.zeros(w.shape[0], np.float32)
        if tuple(w.shape) != tuple(conv.weight.shape):
            raise ModelLoadError(f"{onnx_path}: convolution {i} ({node.name}) is {tuple(w.shape)}, the model's {name} "
                                 f"{tuple(conv.weight.shape)}: pass the training config the file was exported from")
        bn = bn_after.get(name)
        if bn is not None:
            write_folded_conv(state, model, name, bn, w, b)
        elif conv.bias is not None:
            state[f"{name}.weight"] = torch.from_numpy(np.asarray(w, np.float32).copy())
            state[f"{name}.bias"] = torch.from_numpy(np.asarray(b, np.float32).copy())
        else:
            raise ModelLoadError(f"{name}: neither a BatchNorm after it nor a bias, so the folded bias of "
                                 f"{onnx_path}'s {node.name} has nowhere to go")
    model.load_state_dict(state)

    want, got = _onnx_and_torch_outputs(onnx_path, model, cfg.size_px)
    max_abs = float(np.abs(got - want).max())
    if max_abs > _SEGMENTER_TOLERANCE:
        raise ModelLoadError(f"recovered segmenter differs from {onnx_path} by {max_abs:.2e} logits (> "
                             f"{_SEGMENTER_TOLERANCE}): the config {config_path} does not describe the exported U-Net "
                             "(encoder, decoder_channels, pad_type, size_px)")
    source, ckpt = _save_recovered(SEG_KIND, cfg, model, onnx_path, out_path, shipped, max_abs)
    return RecoveredSegmenter(out=out_path, source_fingerprint=source, fingerprint=ckpt.fingerprint,
                              convolutions=len(convs), max_abs_diff=max_abs, max_abs_logit=float(np.abs(want).max()))
