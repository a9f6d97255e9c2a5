"""The embedder's settings: :class:`EmbedderConfig` (model, loss, crops, data, optimisation) with the training
augmentation :class:`AugmentConfig` inside it. Frozen dataclasses that import no albumentations, so a
checkpoint's config resolves wherever the model is only built or exported (``emb_model``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import timm
from coinvision.sdk.preprocess import CROP_MASKS, DEFAULT_CROP_MARGIN_FRAC, INTERPOLATIONS, InputSpec
from coinvision.trainer.emb_losses import LOSSES, PAIR_LOSSES

__all__ = ["HEAD_INITS", "SAMPLERS", "AugmentConfig", "EmbedderConfig"]

SAMPLERS = ("shuffle", "m_per_class")
HEAD_INITS = ("random", "pca")
MAX_OUTLINE_JITTER_PX = 3


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities / strengths of the training augmentation (albumentations)."""

    rotate_p: float = 1.0  # full 360 degrees: a coin has no upright on a table
    hflip_p: float = 0.5  # a mirrored coin never occurs in a photo; kept as the design asks, 0 disables
    scale_jitter: float = 0.1  # +- zoom, imitates segmentation boxes that are a little loose or tight
    perspective_p: float = 0.3
    blur_p: float = 0.25  # Gaussian / motion / defocus
    noise_p: float = 0.3  # ISO (sensor) or Gaussian noise
    brightness_contrast_p: float = 0.7
    color_p: float = 0.3  # small hue/saturation shifts: metal colour separates copper from brass, keep small
    shadow_p: float = 0.2
    jpeg_p: float = 0.2

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"augment.{name}={value}: must be in [0, 1]")



@dataclass(frozen=True)
class EmbedderConfig:
    # model
    backbone: str = "tf_efficientnet_lite0"  # any timm model name; its pretrained config gives mean/std
    pad_type: str = ""  # timm conv padding; "same" for weights ported from TF/TFLite
    pretrained_path: str | None = None  # local timm weights file for the backbone (no hub access)
    head_hidden_dims: tuple[int, ...] = (512,)  # Linear-BN-ReLU-Dropout blocks before the embedding layer
    head_dropout: float = 0.1
    embedding_dim: int = 64  # the trained head's output; the model's output adds branch_dims when a branch is set
    size_px: int = 224
    head_init: str = "random"  # "pca": a linear head (head_hidden_dims: []) starts at the frozen features' PCA
    embed_rotations: int = 1  # embed N rotated views and average (validation here, the SDK on the phone)
    crop_interpolation: str = "area"  # how the crop is shrunk to size_px (InputSpec.interpolation)
    # frozen branch (emb_model.FrozenBranch): a second, untrained pretrained backbone of the same crop whose pooled
    # features are PCA-projected and concatenated, so the search cosine is (1 - w) * trained + w * branch.
    # Not trained: fitted on a trained checkpoint by `coinvision train embedder-branch` (emb_branch.py).
    branch_backbone: str | None = None  # timm name, e.g. tf_efficientnet_lite0; None = no branch
    branch_pad_type: str = ""
    branch_pretrained_path: str | None = None
    branch_dims: int = 64  # PCA dimensions of the branch's pooled features
    branch_weight: float = 0.2  # w: share of the branch in the cosine
    # companion: a second TRAINED embedder of the same architecture (another run of the recipe), its unit vector
    # concatenated too, so the cosine is (1 - w_c - w_b) * trained + w_c * companion + w_b * branch. Two runs err on
    # different coins (benchmarks/bench_embedder_pair.py). Added by `coinvision train embedder-branch --companion`.
    companion_weight: float = 0.0  # w_c: share of the companion in the cosine; 0 = none
    # whitening of the whole output (emb_model.Embedder): (v - mean) @ projection, re-normalised, both fitted on
    # training-class photos by `coinvision train embedder-whiten` (emb_whiten.py) after every other part is set.
    whiten: bool = False
    # loss (emb_losses.LOSSES)
    loss: str = "arcface"
    margin_rad: float = 0.2  # additive angular margin, RADIANS (pytorch-metric-learning wants degrees)
    scale: float = 25.0
    sub_centers: int = 3  # subcenter_arcface only
    pair_margin: float = 0.1  # triplet: cosine margin
    center_weight: float = 0.01  # softmax_center: weight of the centre term
    distill_weight: float = 0.0  # similarity distillation from the frozen pretrained backbone (0 = off)
    # crops (must match the SDK: segmenter -> coin_crop)
    background_removal: bool = True
    segmenter_checkpoint: str | None = None  # a torch segmenter checkpoint (e.g. runs/segmenter/mnv2/best.pt)
    segmenter_models_dir: str | None = None  # or a models folder: segmenter.pt / .onnx / .tflite
    segmenter_runtime: str = "torch"
    crop_margin_frac: float = DEFAULT_CROP_MARGIN_FRAC
    # which pixels the crop keeps: the mask's, or its "convex_hull" (spec step 3; written to the metadata when not
    # "exact", so the SDK crops as the training did)
    crop_mask: str = "exact"
    # training crops also cut by the segmenter's mask grown / shrunk by 1 .. this many pixels (3x3 dilate / erode),
    # one of them (or the unmoved one) drawn per sample and epoch: the shipped embedder loses ~1 point of Recall@1
    # when every outline moves by one pixel (benchmarks/bench_mask_sensitivity.py), so a segmenter that draws
    # better outlines shows as a loss until the embedder has seen outlines vary. Validation crops stay unmoved.
    outline_jitter_px: int = 0
    crop_cache_dir: str = "runs/crop_cache"
    # data
    data_roots: tuple[str, ...] = ()
    split_file: str | None = None  # trainer/splits.py CSV; None = make_splits(split_seed, val_class_frac)
    split_seed: int = 0
    val_class_frac: float = 0.2
    max_val_seen_per_class: int = 0  # 0 = all; caps validation time
    max_queries_per_class: int = 0  # 0 = all; stops one big unseen class dominating Recall@k
    # A deployed catalog holds the trained coins too: "full_*" metrics search the unseen-class queries in the
    # unseen catalog PLUS this many photos of every training class (0 = off). Model selection stays on the
    # unseen-only Recall@1 of the issue; the full_* numbers are the harder, more realistic ones.
    distractors_per_class: int = 3
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    unknown_threshold: float | None = None  # None: calibrated on the unseen classes (best.pt stores the value)
    unknown_target_accept: float = 0.05  # calibration: share of simulated unknown coins allowed through
    # optimisation
    sampler: str = "shuffle"  # "m_per_class": m photos of each sampled class per batch (pair losses need it)
    m_per_class: int = 4
    epochs: int = 10
    steps_per_epoch: int = 0  # 0 = one pass over the training images
    batch_size: int = 32
    lr_backbone: float = 1e-3
    lr_head: float = 3e-3  # FC head + ArcFace class centres
    weight_decay: float = 1e-4
    warmup_frac: float = 0.1  # one-cycle warm-up share of each schedule
    freeze_backbone_epochs: int = 0  # head-only epochs first (backbone in eval mode, not stepped)
    freeze_stages: int = 0  # stem + this many backbone stages stay at their pretrained weights (eval-mode BN)
    trunk_cache_views: int = 0  # > 0: train the top on cached frozen-trunk activations of K views (emb_trunk)
    seed: int = 0
    num_threads: int = 1
    num_workers: int = 0
    device: str = "auto"  # "auto" -> cuda when present, else cpu
    amp: bool = False  # float16 mixed precision, CUDA only (train_loop.Amp); off keeps runs bit-for-bit fp32
    out_dir: str = "runs/embedder"

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r}: must be one of {LOSSES}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler={self.sampler!r}: must be one of {SAMPLERS}")
        if self.loss in PAIR_LOSSES and self.sampler != "m_per_class":
            raise ValueError(f"loss={self.loss!r} mines pairs inside a batch; set sampler: m_per_class")
        if self.sampler == "m_per_class" and (self.m_per_class < 2 or self.batch_size % self.m_per_class):
            raise ValueError(f"m_per_class={self.m_per_class}: must be >= 2 and divide batch_size={self.batch_size}")
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"head_init={self.head_init!r}: must be one of {HEAD_INITS}")
        if self.head_init == "pca" and self.head_hidden_dims:
            raise ValueError("head_init: pca needs a linear head; set head_hidden_dims: []")
        if not 1 <= self.embed_rotations <= 64:
            raise ValueError(f"embed_rotations={self.embed_rotations}: must be in [1, 64] (1 = off)")
        if self.crop_interpolation not in INTERPOLATIONS:
            raise ValueError(f"crop_interpolation={self.crop_interpolation!r}: must be one of {INTERPOLATIONS}")
        if self.crop_mask not in CROP_MASKS:
            raise ValueError(f"crop_mask={self.crop_mask!r}: must be one of {CROP_MASKS}")
        if not 0 <= self.outline_jitter_px <= MAX_OUTLINE_JITTER_PX:
            raise ValueError(f"outline_jitter_px={self.outline_jitter_px}: must be in [0, {MAX_OUTLINE_JITTER_PX}]")
        if self.outline_jitter_px and (not self.background_removal or self.trunk_cache_views):
            raise ValueError(f"outline_jitter_px={self.outline_jitter_px} moves the segmenter's outline: it needs "
                             "background_removal: true and trunk_cache_views: 0 (cached trunk views are unmoved)")
        if self.freeze_stages < 0:
            raise ValueError(f"freeze_stages={self.freeze_stages}: must be >= 0")
        if self.trunk_cache_views < 0 or (self.trunk_cache_views and not self.freeze_stages):
            raise ValueError(f"trunk_cache_views={self.trunk_cache_views}: must be >= 0, and > 0 only with "
                             "freeze_stages > 0 (only a frozen trunk can be cached)")
        if self.distill_weight < 0:
            raise ValueError(f"distill_weight={self.distill_weight}: must be >= 0")
        if not 0.0 < self.margin_rad < math.pi / 2:
            raise ValueError(f"margin_rad={self.margin_rad}: must be in (0, pi/2) RADIANS (0.2 rad = 11.46 deg)")
        if self.scale <= 0 or self.embedding_dim < 2 or self.size_px < 32:
            raise ValueError("scale must be > 0, embedding_dim >= 2, size_px >= 32")
        if self.epochs < 1 or self.batch_size < 2 or self.steps_per_epoch < 0:
            raise ValueError("epochs >= 1, batch_size >= 2 (BatchNorm in the head) and steps_per_epoch >= 0")
        if not 0 <= self.freeze_backbone_epochs < self.epochs:
            raise ValueError(f"freeze_backbone_epochs={self.freeze_backbone_epochs}: must be in [0, epochs)")
        if self.segmenter_runtime not in ("torch", "onnx", "tflite"):
            raise ValueError(f"segmenter_runtime={self.segmenter_runtime!r}: must be torch, onnx or tflite")
        if self.branch_backbone is not None and not (0.0 < self.branch_weight < 1.0 and self.branch_dims >= 2):
            raise ValueError(f"branch_weight={self.branch_weight}, branch_dims={self.branch_dims}: the weight must "
                             "be in (0, 1) and the dims >= 2")
        if not 0.0 <= self.companion_weight < 1.0 or (
                self.companion_weight + (self.branch_weight if self.branch_backbone else 0.0) >= 1.0):
            raise ValueError(f"companion_weight={self.companion_weight}: must be in [0, 1) and leave the trained "
                             f"embedder a share (with the branch's {self.branch_weight}: their sum below 1)")
        if not 0.0 < self.warmup_frac < 1.0:
            raise ValueError(f"warmup_frac={self.warmup_frac}: must be in (0, 1)")

    @property
    def output_dim(self) -> int:
        """Length of the vector the model returns (and packs store): the head's, the companion's, the branch's."""
        return (self.embedding_dim * (2 if self.companion_weight else 1)
                + (self.branch_dims if self.branch_backbone else 0))

    @property
    def input_spec(self) -> InputSpec:
        """Mean/std are the backbone's (timm pretrained config): (0.5, 0.5) for EfficientNet-Lite, ImageNet's
        for the ported MobileNetV2, so the weights see the input they were trained on."""
        pretrained = timm.get_pretrained_cfg(self.backbone)
        mean, std = (tuple(pretrained.mean), tuple(pretrained.std)) if pretrained else (None, None)
        extra = {"mean": mean, "std": std} if mean and std else {}
        return InputSpec(size_px=self.size_px, interpolation=self.crop_interpolation, **extra)
