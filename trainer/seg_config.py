"""The segmenter's settings: :class:`SegmenterConfig` (model, data, optimisation) with the scene recipe
:class:`SynthConfig` inside it. Plain frozen dataclasses that import neither torch nor albumentations, so a
checkpoint's config resolves wherever the model is only built or exported (``seg_model``)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import timm
from coinvision.sdk.preprocess import InputSpec
from coinvision.sdk.segmenter import (
    DEFAULT_MARGIN_FRAC,
    DEFAULT_SEGMENT_THRESHOLD,
    DEFAULT_SINGLE_PASS_BOX_FRAC,
    DEFAULT_TILE_FRAC,
    DEFAULT_VIEWS,
    MIN_TILE_FRAC,
    VIEWS_ALLOWED,
)

__all__ = ["LABEL_MODES", "LOSSES", "MAX_COVERAGE_RATIO", "MIN_COVERAGE_RATIO", "SegmenterConfig", "SynthConfig"]

MIN_COVERAGE_RATIO = 1.0  # coin square : output area, at most 1:1 ...
MAX_COVERAGE_RATIO = 36.0  # ... and at least 1:36

LABEL_MODES = ("all", "largest")
# smp losses on the logits: Dice (the default), Lovasz hinge per image (a surrogate of per-image IoU, the metric we
# report; usually a fine-tuning loss, after Dice), or their sum
LOSSES = ("dice", "lovasz", "dice+lovasz")


@dataclass(frozen=True)
class SynthConfig:
    """Scene recipe. The v2 hard cases default to off (probability 0), so older configs make the same scenes."""

    size_px: int = 128
    coverage_ratio: tuple[float, float] = (MIN_COVERAGE_RATIO, MAX_COVERAGE_RATIO)
    procedural_bg_p: float = 0.3
    extra_coins_p: float = 0.25  # smaller distractor coins in the scene, never touching the main one
    hole_p: float = 0.08
    finger_p: float = 0.15
    letterbox_p: float = 0.2
    blend_levels: int = 3
    # v2 hard cases
    multi_coin_p: float = 0.0  # 2-5 coins, touching / overlapping / apart, the main one the largest
    multi_coins: tuple[int, int] = (2, 5)  # coins in a multi-coin scene, main included
    touch_p: float = 0.7  # a multi-coin scene's extra coin is placed against an earlier coin (else anywhere)
    on_top_p: float = 0.3  # an extra coin lies over the coins placed before it (else under them)
    other_area: tuple[float, float] = (0.3, 0.8)  # extra coin area : main coin area
    skin_bg_p: float = 0.0  # the coin lies on a palm
    glare_p: float = 0.0
    coin_shadow_p: float = 0.0
    bg_match_p: float = 0.0  # background recoloured to the coin's colour

    def __post_init__(self) -> None:
        lo, hi = self.multi_coins
        if not 2 <= lo <= hi:
            raise ValueError(f"multi_coins={self.multi_coins}: need 2 <= min <= max")
        if not 0.0 < self.other_area[0] <= self.other_area[1] < 1.0:
            raise ValueError(f"other_area={self.other_area}: need 0 < min <= max < 1 (the main coin is the largest)")


@dataclass(frozen=True)
class SegmenterConfig:
    # model
    encoder: str = "tu-efficientnet_b0"  # any smp encoder; "tu-<timm name>" goes through timm
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16, 8)
    pad_type: str = ""  # timm conv padding; "same" for weights ported from TF/TFLite
    pretrained_path: str | None = None  # local timm weights file for the encoder (no hub access)
    init_checkpoint: str | None = None  # a segmenter checkpoint of the same U-Net to start from (fine-tuning)
    size_px: int = 128
    threshold: float = DEFAULT_SEGMENT_THRESHOLD  # release probability threshold
    margin_frac: float = DEFAULT_MARGIN_FRAC  # two-pass crop margin per side
    split_touching: bool = False  # post-processing: cut touching coins apart before keeping the largest
    single_pass_box_frac: float | None = DEFAULT_SINGLE_PASS_BOX_FRAC  # post-processing: one pass for big coins
    tile_frac: float | None = DEFAULT_TILE_FRAC  # post-processing: tiles when the whole photo shows no coin
    views: int = DEFAULT_VIEWS  # post-processing: turns of its crop the second pass averages (1, 2 or 4)
    # data
    data_roots: tuple[str, ...] = ()  # dataset folders (images/<class>/..., classes.csv)
    backgrounds_root: str | None = None
    labels_dir: str = "runs/seg_labels"  # auto-labels (manifest.csv + mask PNGs), see `coinvision data seg-labels`
    split_file: str | None = None  # trainer/splits.py CSV; None = make_splits(seed=split_seed)
    split_seed: int = 0
    real_train_frac: float = 0.3  # share of training samples that are real auto-labelled photos
    synth: SynthConfig = field(default_factory=SynthConfig)
    label: str = "all"  # what a synthetic scene's label marks: "all" coins, or only the "largest" (the kept one)
    # share of synthetic samples rendered at pass_view_scene_px and cut as the two-pass pipeline cuts a photo (half
    # the whole scene letterboxed, half the second pass's crop around the label): the model then trains on the
    # inputs it gets at inference, the downscale's aliasing and the crop's scale included (``seg_train.PassViews``)
    pass_view_p: float = 0.0
    pass_view_scene_px: int = 384
    # share of real training photos cut to the second pass's crop around their label (catalogue photos show both
    # sides of a coin: the crop around one holds part of the other, which must stay out of the mask)
    real_pass_view_p: float = 0.0
    val_synthetic: int = 200
    val_real: int = 300
    # optimisation
    loss: str = "dice"
    freeze_bn: bool = False  # BatchNorms keep their statistics (eval mode)
    # submodules (``model.named_modules()`` names, e.g. "encoder", "decoder.blocks.0") that keep their weights and
    # BatchNorm statistics: a fine-tune of the rest alone (what the deep layers decide, e.g. which of several coins is
    # the largest, stays; the outline the shallow decoder blocks draw can still improve)
    frozen_modules: tuple[str, ...] = ()
    # with init_checkpoint: measure its BatchNorm statistics on this many training samples first, at the training
    # batch size (same eval function); a checkpoint recovered from ONNX has folded identities there, which train-mode
    # BN would turn into another function
    bn_calibration_samples: int = 0
    # a segmenter checkpoint of the same input whose probability map is also the target of every real photo's sample
    # (binary cross-entropy with that soft map, times distill_weight, beside the loss on the label). A hard mask leaves
    # the outline free by a fraction of the model's pixel, which at a photo's own size is the pixel the embedder feels
    # (bench_mask_sensitivity); the teacher's soft map says where in that pixel the outline lies
    distill_checkpoint: str | None = None
    distill_weight: float = 1.0
    epochs: int = 10
    steps_per_epoch: int = 200
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    num_threads: int = 1
    device: str = "auto"  # "auto" -> cuda when present, else cpu
    amp: bool = False  # float16 mixed precision, CUDA only (train_loop.Amp); off keeps runs bit-for-bit fp32
    out_dir: str = "runs/segmenter"

    def __post_init__(self) -> None:
        if self.size_px % 32:
            raise ValueError(f"size_px={self.size_px}: the U-Net needs a multiple of 32")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold={self.threshold}: must be in (0, 1)")
        if self.single_pass_box_frac is not None and not self.single_pass_box_frac > 0.0:
            raise ValueError(f"single_pass_box_frac={self.single_pass_box_frac}: must be > 0 (e.g. 0.8), or null")
        if self.tile_frac is not None and not MIN_TILE_FRAC <= self.tile_frac < 1.0:
            raise ValueError(f"tile_frac={self.tile_frac}: must be in [{MIN_TILE_FRAC}, 1) (e.g. 0.4), or null")
        if not isinstance(self.views, int) or isinstance(self.views, bool) or self.views not in VIEWS_ALLOWED:
            raise ValueError(f"views={self.views!r}: must be one of {VIEWS_ALLOWED}")
        if self.bn_calibration_samples < 0 or (self.bn_calibration_samples and self.init_checkpoint is None):
            raise ValueError(f"bn_calibration_samples={self.bn_calibration_samples}: must be >= 0, and only with an "
                             "init_checkpoint (a fresh model's BatchNorms train from the start)")
        if not self.distill_weight > 0.0:
            raise ValueError(f"distill_weight={self.distill_weight}: must be > 0 (leave distill_checkpoint null for no "
                             "distillation)")
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r}: must be one of {LOSSES}")
        if self.label not in LABEL_MODES:
            raise ValueError(f"label={self.label!r}: must be one of {LABEL_MODES}")
        if not 0.0 <= self.pass_view_p <= 1.0:
            raise ValueError(f"pass_view_p={self.pass_view_p}: must be in [0, 1]")
        if not 0.0 <= self.real_pass_view_p <= 1.0:
            raise ValueError(f"real_pass_view_p={self.real_pass_view_p}: must be in [0, 1]")
        if self.pass_view_scene_px < self.size_px:
            raise ValueError(f"pass_view_scene_px={self.pass_view_scene_px}: must be >= size_px={self.size_px} (scenes "
                             "the pipeline shrinks to the model's input)")
        if not 0.0 <= self.real_train_frac <= 1.0:
            raise ValueError(f"real_train_frac={self.real_train_frac}: must be in [0, 1]")
        if self.epochs < 1 or self.steps_per_epoch < 1 or self.batch_size < 1:
            raise ValueError("epochs, steps_per_epoch and batch_size must be >= 1")
        if self.synth.size_px != self.size_px:
            object.__setattr__(self, "synth", replace(self.synth, size_px=self.size_px))

    @property
    def input_spec(self) -> InputSpec:
        """Mean/std are the encoder's (timm pretrained config: (0.5, 0.5) for EfficientNet-Lite, ImageNet's for
        MobileNetV2), so pretrained weights see the input they were trained on."""
        pretrained = timm.get_pretrained_cfg(self.encoder.removeprefix("tu-"))
        if pretrained is None or not pretrained.mean or not pretrained.std:
            return InputSpec(size_px=self.size_px)
        return InputSpec(size_px=self.size_px, mean=tuple(pretrained.mean), std=tuple(pretrained.std))
