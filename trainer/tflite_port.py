"""Port the int8 TFLite MobileNetV2 (ImageNet) onto timm ``mobilenetv2_100``.

No model hub is reachable, so the quantized TFLite flatbuffers are our only ImageNet features. The TFLite
graph has batch-norm folded into each convolution; we dequantize every conv (per-channel where the tensor
carries per-channel scales), move it from TFLite layout (conv OHWI, depthwise 1HWO) to PyTorch OIHW, and
put the folded bias into the BatchNorm that follows (timm convs have no bias) with the BN otherwise an
identity in eval mode.

Two choices keep the port usable like any other timm checkpoint:

* Input normalisation. The TFLite model sees ``(u8 - zero_point) * scale`` (about ``u8 / 127.5 - 1``).
  We fold the difference into the stem conv so the ported model takes ImageNet mean/std input (our
  ``InputSpec`` default). Only the zero-padded border of the stem differs (TFLite pads with mid-grey,
  the folded model with the ImageNet mean colour).
* BatchNorm statistics. With ``running_mean=0, running_var=1-eps`` the eval function is exact, but the
  first train-mode step would renormalise every layer by batch statistics and wreck the features. When
  calibration images are given we therefore "unfold": BN running stats become the measured per-channel
  mean/var of each conv output and ``gamma = sqrt(var + eps)``, ``beta = mean + folded_bias``. The eval
  function is unchanged (exactly), and train-mode batch statistics start close to the running ones.

TF "SAME" padding of stride-2 convs pads bottom/right only; timm's default pads symmetrically. The
weights are identical either way (same state_dict keys); ``pad_type="same"`` reproduces TFLite
arithmetic, the default gives a half-pixel shift that fine-tuning absorbs. :func:`compare_with_tflite`
reports both.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from coinvision.sdk.errors import ConversionError, ModelLoadError
from coinvision.sdk.files import list_images
from coinvision.sdk.images import load_image
from coinvision.sdk.preprocess import IMAGENET_MEAN, IMAGENET_STD, InputSpec, letterbox, to_model_input

__all__ = [
    "PortCheck",
    "TfliteConv",
    "calibrate_batchnorm",
    "compare_with_tflite",
    "conv_bn_pairs",
    "create_ported_model",
    "list_check_images",
    "port_mobilenetv2",
    "read_tflite_convs",
    "recalibrate_batchnorm",
    "tflite_logits",
    "timm_convs",
    "write_folded_conv",
]

log = logging.getLogger(__name__)

TIMM_ARCH = "mobilenetv2_100"
INPUT_SIZE_PX = 224
_CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


@dataclass(frozen=True)
class TfliteConv:
    """One dequantized convolution of the TFLite graph, already in PyTorch layout."""

    name: str
    op: str  # CONV_2D | DEPTHWISE_CONV_2D | FULLY_CONNECTED
    weight: np.ndarray  # float32 OIHW (depthwise: Cx1xKxK)
    bias: np.ndarray  # float32 (O,)
    stride: int


@dataclass(frozen=True)
class PortCheck:
    """Agreement of the ported PyTorch model with the TFLite interpreter on real photos."""

    n_images: int
    pad_type: str
    top1_agreement: float  # fraction of images whose arg-max class is the same
    top5_overlap: float  # mean |top5_torch ∩ top5_tflite| / 5
    logit_corr: float  # mean per-image Pearson correlation of the 1000 logits
    tflite_top1_in_torch_top5: float

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def _interpreter(tflite_path: Path, *, preserve_all: bool = False):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    if not tflite_path.is_file():
        raise ModelLoadError(f"TFLite file {tflite_path} does not exist; pass the path of the .tflite model")
    try:
        interp = Interpreter(
            model_path=str(tflite_path),
            experimental_preserve_all_tensors=preserve_all,
            # The default XNNPACK delegate swallows intermediate tensors we need to read back.
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{tflite_path}: not a loadable TFLite model ({exc})") from exc
    return interp


def _dequantize(interp, detail: dict) -> np.ndarray:
    q = interp.get_tensor(detail["index"])
    if q.dtype in (np.float32, np.float16):
        return q.astype(np.float32)
    params = detail["quantization_parameters"]
    scales, zero_points = params["scales"], params["zero_points"]
    if len(scales) == 0:
        raise ConversionError(f"tensor {detail['name']!r} is {q.dtype} without quantization parameters")
    shape = [1] * q.ndim
    if len(scales) > 1:  # per-channel
        shape[params["quantized_dimension"]] = len(scales)
    return ((q.astype(np.float64) - zero_points.reshape(shape)) * scales.reshape(shape)).astype(np.float32)


def read_tflite_convs(tflite_path: str | Path) -> tuple[list[TfliteConv], dict[str, float]]:
    """Every conv/depthwise/fully-connected op in graph order, dequantized, plus the input quantization."""
    tflite_path = Path(tflite_path)
    interp = _interpreter(tflite_path)
    details = {d["index"]: d for d in interp.get_tensor_details()}
    convs: list[TfliteConv] = []
    for op in interp._get_ops_details():  # no public op-graph API in the Python interpreter
        if op["op_name"] not in _CONV_OPS:
            continue
        x_idx, w_idx, b_idx = (int(i) for i in op["inputs"][:3])
        w_detail = details[w_idx]
        w = _dequantize(interp, w_detail)
        b = _dequantize(interp, details[b_idx]) if b_idx >= 0 else np.zeros(w.shape[0], np.float32)
        in_hw = details[x_idx]["shape"][1:3] if len(details[x_idx]["shape"]) == 4 else np.array([1, 1])
        out_shape = details[int(op["outputs"][0])]["shape"]
        out_hw = out_shape[1:3] if len(out_shape) == 4 else np.array([1, 1])
        stride = round(int(in_hw[0]) / int(out_hw[0]))
        if op["op_name"] == "DEPTHWISE_CONV_2D":
            weight = w[0].transpose(2, 0, 1)[:, None]  # 1HWC -> C1HW
        elif op["op_name"] == "CONV_2D":
            weight = w.transpose(0, 3, 1, 2)  # OHWI -> OIHW
        else:
            weight = w.reshape(w.shape[0], -1, 1, 1)
        convs.append(TfliteConv(w_detail["name"], op["op_name"], np.ascontiguousarray(weight), b, stride))
    inp = interp.get_input_details()[0]
    scale, zero_point = inp["quantization"]
    if inp["dtype"] != np.uint8 or scale == 0:
        raise ConversionError(f"{tflite_path}: expected a uint8 quantized input, got {inp['dtype']} scale {scale}")
    return convs, {"scale": float(scale), "zero_point": float(zero_point)}


def timm_convs(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Every ``Conv2d`` of a timm MobileNetV2 / EfficientNet with its name, in forward order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]


def conv_bn_pairs(model: torch.nn.Module) -> list[tuple[str, str]]:
    """``(conv, the BatchNorm registered right after it)`` for every conv that has one (timm blocks, smp
    ``Conv2dReLU``: conv, bn, act); a conv followed by anything else (a head with its own bias) is left out."""
    return [(name, after) for (name, module), (after, nxt) in itertools.pairwise(model.named_modules())
            if isinstance(module, torch.nn.Conv2d) and isinstance(nxt, torch.nn.BatchNorm2d)]


def write_folded_conv(state_dict: dict[str, torch.Tensor], model: torch.nn.Module, conv_name: str, bn: str,
                      weight: np.ndarray, bias: np.ndarray) -> None:
    """Put a conv whose BatchNorm was folded into it (``weight``, ``bias``) into the conv + the BN after it
    (``bn``, from :func:`conv_bn_pairs`): the BN becomes the identity plus ``bias`` (``running_mean=0,
    running_var=1-eps``), so eval output is exact."""
    eps = model.get_submodule(bn).eps
    state_dict[f"{conv_name}.weight"] = torch.from_numpy(np.asarray(weight, dtype=np.float32).copy())
    state_dict[f"{bn}.weight"] = torch.ones_like(state_dict[f"{bn}.weight"])
    state_dict[f"{bn}.bias"] = torch.from_numpy(np.asarray(bias, dtype=np.float32).copy())
    state_dict[f"{bn}.running_mean"] = torch.zeros_like(state_dict[f"{bn}.running_mean"])
    state_dict[f"{bn}.running_var"] = torch.full_like(state_dict[f"{bn}.running_var"], 1.0 - eps)


def port_mobilenetv2(
    tflite_path: str | Path,
    *,
    imagenet_input: bool = True,
    num_classes: int = 1000,
) -> dict[str, torch.Tensor]:
    """timm ``mobilenetv2_100`` state_dict from a TFLite MobileNetV2 1.0 224 (TF1 QAT or TF2 PTQ).

    ``imagenet_input``: fold the TFLite input scaling into the stem so the model takes ImageNet mean/std
    normalised input; otherwise it takes ``(u8 - zero_point) * scale`` like the TFLite model.
    ``num_classes``: 1000 drops TF's background class 0 (then indices are the usual ImageNet-1k ones);
    1001 keeps it.
    """
    import timm

    if num_classes not in (1000, 1001):
        raise ConversionError(f"num_classes={num_classes}: must be 1000 (ImageNet-1k) or 1001 (with background)")
    convs, input_q = read_tflite_convs(tflite_path)
    model = timm.create_model(TIMM_ARCH, pretrained=False, num_classes=num_classes)
    targets = timm_convs(model)
    if len(convs) != len(targets) + 1:
        raise ConversionError(
            f"{tflite_path}: {len(convs)} conv ops, expected {len(targets) + 1} for MobileNetV2 1.0 "
            "(is this the right model?)"
        )
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    bn_after = dict(conv_bn_pairs(model))
    for (name, module), conv in zip(targets, convs[:-1], strict=True):
        if tuple(module.weight.shape) != conv.weight.shape or module.stride[0] != conv.stride:
            raise ConversionError(
                f"{tflite_path}: op {conv.name!r} {conv.weight.shape}/stride {conv.stride} does not fit "
                f"timm {name} {tuple(module.weight.shape)}/stride {module.stride[0]}"
            )
        weight, bias = conv.weight.astype(np.float64), conv.bias.astype(np.float64)
        if name == "conv_stem" and imagenet_input:
            weight, bias = _fold_input_normalisation(weight, bias, input_q)
        write_folded_conv(sd, model, name, bn_after[name], weight, bias)
    head = convs[-1]
    fc_w, fc_b = head.weight.reshape(head.weight.shape[0], -1), head.bias
    if fc_w.shape != (1001, 1280):
        raise ConversionError(f"{tflite_path}: classifier {fc_w.shape}, expected (1001, 1280)")
    start = 1001 - num_classes
    sd["classifier.weight"] = torch.from_numpy(np.ascontiguousarray(fc_w[start:]))
    sd["classifier.bias"] = torch.from_numpy(np.ascontiguousarray(fc_b[start:]))
    return sd


def _fold_input_normalisation(
    weight: np.ndarray, bias: np.ndarray, input_q: dict[str, float]
) -> tuple[np.ndarray, np.ndarray]:
    """TFLite input ``x_tf = (u8 - zp) * s`` with ``u8 = 255 (x_in * std + mean)``: ``x_tf = a x_in + d``."""
    mean, std = np.asarray(IMAGENET_MEAN), np.asarray(IMAGENET_STD)
    a = 255.0 * input_q["scale"] * std
    d = (255.0 * mean - input_q["zero_point"]) * input_q["scale"]
    new_weight = weight * a[None, :, None, None]
    new_bias = bias + (weight * d[None, :, None, None]).sum(axis=(1, 2, 3))
    return new_weight, new_bias


def create_ported_model(state_dict: dict[str, torch.Tensor], *, pad_type: str = "") -> torch.nn.Module:
    """timm ``mobilenetv2_100`` carrying the ported weights, in eval mode."""
    import timm

    num_classes = state_dict["classifier.weight"].shape[0] if "classifier.weight" in state_dict else 0
    model = timm.create_model(TIMM_ARCH, pretrained=False, num_classes=num_classes, pad_type=pad_type)
    model.load_state_dict(state_dict)
    return model.eval()


@torch.no_grad()
def calibrate_batchnorm(state_dict: dict[str, torch.Tensor], batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """Unfold the ported MobileNetV2's BN: running stats measured on ``batch`` (ImageNet-normalised NCHW), same eval
    function (:func:`recalibrate_batchnorm`)."""
    model = create_ported_model(state_dict)
    return recalibrate_batchnorm(model, conv_bn_pairs(model), [batch])


def recalibrate_batchnorm(model: torch.nn.Module, pairs: Sequence[tuple[str, str]],
                          batches: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """``model``'s state dict with each (conv, BN after it) pair's BN statistics measured on ``batches``, same eval
    function.

    An eval BN is the affine map ``s * y + t`` (``s = gamma / sqrt(var + eps)``, ``t = beta - s * mean``).
    For every conv output ``y`` with per-channel mean ``m`` and variance ``v`` (each averaged over the batches,
    the variance within a batch, as train-mode BN sees it at that batch size) we store
    ``running_mean=m, running_var=v, gamma=s * sqrt(v + eps), beta=t + s * m``: eval output is unchanged,
    and train-mode BN on similar images (batch stats near ``m, v``) starts near the same function. A BN folded into
    its conv (the identity plus a bias: ``onnx_recovery``) becomes a BN that normalises again, so it can train.
    """
    state_dict = model.state_dict()
    stats: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {name: [] for name, _ in pairs}
    hooks = []
    for name, _ in pairs:

        def hook(_module, _inp, out, name=name):
            y = out.double()
            stats[name].append((y.mean(dim=(0, 2, 3)), y.var(dim=(0, 2, 3), unbiased=False)))

        hooks.append(model.get_submodule(name).register_forward_hook(hook))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in batches:
            model(batch)
    model.train(was_training)
    for h in hooks:
        h.remove()
    out = dict(state_dict)
    for name, bn in pairs:
        m = torch.stack([mean for mean, _ in stats[name]]).mean(dim=0)
        v = torch.stack([var for _, var in stats[name]]).mean(dim=0)
        eps = model.get_submodule(bn).eps
        gamma, beta = state_dict[f"{bn}.weight"].double(), state_dict[f"{bn}.bias"].double()
        mean0, var0 = state_dict[f"{bn}.running_mean"].double(), state_dict[f"{bn}.running_var"].double()
        scale = gamma / (var0 + eps).sqrt()
        shift = beta - scale * mean0
        v = v.clamp_min(1e-6)
        out[f"{bn}.running_mean"] = m.float()
        out[f"{bn}.running_var"] = v.float()
        out[f"{bn}.weight"] = (scale * (v + eps).sqrt()).float()
        out[f"{bn}.bias"] = (shift + scale * m).float()
    return out


def tflite_logits(tflite_path: str | Path, images_u8: np.ndarray) -> np.ndarray:
    """Dequantized pre-softmax logits (N, 1001) of the TFLite model for uint8 NHWC 224x224 images."""
    interp = _interpreter(Path(tflite_path), preserve_all=True)
    softmax = [op for op in interp._get_ops_details() if op["op_name"] == "SOFTMAX"]
    details = {d["index"]: d for d in interp.get_tensor_details()}
    logits_detail = details[int(softmax[0]["inputs"][0])] if softmax else interp.get_output_details()[0]
    inp = interp.get_input_details()[0]
    rows = []
    for img in images_u8:
        interp.set_tensor(inp["index"], img[None].astype(np.uint8))
        interp.invoke()
        rows.append(_dequantize(interp, logits_detail).reshape(-1))
    return np.stack(rows)


def list_check_images(root: str | Path, limit: int, seed: int = 0) -> list[Path]:
    """Up to ``limit`` image files under ``root`` (recursively), a seeded spread over the whole tree."""
    files = list_images(root, required=False)
    if not files:
        raise ConversionError(f"{root}: no images found for the port check; pass a folder with photos")
    if len(files) > limit:
        rng = np.random.default_rng(seed)
        files = sorted(files[i] for i in rng.choice(len(files), size=limit, replace=False))
    return files


def load_check_batch(paths: Sequence[Path]) -> np.ndarray:
    """uint8 NHWC 224x224 letterboxed photos (the same pixels go to both runtimes)."""
    return np.stack([letterbox(load_image(p), INPUT_SIZE_PX)[0] for p in paths])


def imagenet_batch(images_u8: np.ndarray) -> torch.Tensor:
    spec = InputSpec(size_px=INPUT_SIZE_PX)
    return torch.from_numpy(np.concatenate([to_model_input(img, spec) for img in images_u8]))


@torch.no_grad()
def compare_with_tflite(
    state_dict: dict[str, torch.Tensor],
    tflite_path: str | Path,
    images_u8: np.ndarray,
    *,
    pad_type: str = "",
    reference_logits: np.ndarray | None = None,
) -> PortCheck:
    """Top-1 agreement, top-5 overlap, logit correlation of the port vs the TFLite interpreter."""
    ref = tflite_logits(tflite_path, images_u8) if reference_logits is None else reference_logits
    model = create_ported_model(state_dict, pad_type=pad_type)
    ours = model(imagenet_batch(images_u8)).numpy()
    if ours.shape[1] == 1000:
        ref = ref[:, 1:]  # drop TF's background class
    top1 = float(np.mean(ours.argmax(1) == ref.argmax(1)))
    top5_ours, top5_ref = np.argsort(-ours, 1)[:, :5], np.argsort(-ref, 1)[:, :5]
    overlap = float(np.mean([len(set(a) & set(b)) / 5 for a, b in zip(top5_ours, top5_ref, strict=True)]))
    in5 = float(np.mean([b[0] in a for a, b in zip(top5_ours, top5_ref, strict=True)]))
    corr = float(np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(ours, ref, strict=True)]))
    return PortCheck(len(images_u8), pad_type or "symmetric", top1, overlap, corr, in5)


def save_state_dict(state_dict: dict[str, torch.Tensor], out_path: str | Path) -> Path:
    """Atomic ``torch.save`` of a plain state_dict (what timm's ``pretrained_cfg_overlay=dict(file=...)`` reads)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    torch.save({k: v.contiguous() for k, v in state_dict.items()}, tmp)
    tmp.replace(out_path)
    return out_path


def port_and_check(
    tflite_path: str | Path,
    out_path: str | Path,
    *,
    check_images: str | Path | None = None,
    max_images: int = 64,
    seed: int = 0,
) -> dict:
    """Port, calibrate BN on the check photos (if any), check against TFLite, write ``.pth`` + ``.json``."""
    import hashlib
    import json

    import timm

    tflite_path, out_path = Path(tflite_path), Path(out_path)
    state_dict = port_mobilenetv2(tflite_path)
    report: dict = {
        "source": tflite_path.name,
        "source_sha256": hashlib.sha256(tflite_path.read_bytes()).hexdigest(),
        "timm_arch": TIMM_ARCH,
        "num_classes": int(state_dict["classifier.weight"].shape[0]),
        "classes": "ImageNet-1k in the usual index order (TF background class 0 dropped)",
        "input": {
            "normalisation": "ImageNet mean/std (TFLite input scaling folded into conv_stem)",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "size_px": INPUT_SIZE_PX,
            "color_order": "RGB",
        },
        "recommended_pad_type": "same",
        "batchnorm": "identity (running_mean 0, running_var 1-eps)",
        "torch_version": torch.__version__,
        "timm_version": timm.__version__,
        "checks": [],
    }
    if check_images is not None:
        paths = list_check_images(check_images, max_images, seed)
        batch = load_check_batch(paths)
        state_dict = calibrate_batchnorm(state_dict, imagenet_batch(batch))
        report["batchnorm"] = f"unfolded: running stats measured on {len(paths)} check photos, same eval function"
        ref = tflite_logits(tflite_path, batch)
        for pad_type in ("same", ""):
            check = compare_with_tflite(state_dict, tflite_path, batch, pad_type=pad_type, reference_logits=ref)
            report["checks"].append(check.as_dict())
        report["check_images"] = {"root": str(check_images), "n": len(paths), "seed": seed}
    save_state_dict(state_dict, out_path)
    report["sha256"] = hashlib.sha256(out_path.read_bytes()).hexdigest()
    report_path = out_path.with_suffix(".json")
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    log.info("wrote %s and %s", out_path, report_path)
    return report
