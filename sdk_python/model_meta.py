"""Metadata every exported model carries (in the file where the format allows, and in a sidecar JSON).

Readers never hard-code preprocessing: they read it from here (as timm's ``pretrained_cfg`` does).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coinvision.sdk.errors import ModelLoadError
from coinvision.sdk.preprocess import InputSpec

__all__ = ["META_SUFFIX", "MODELS_DIR_ENV", "ModelMetadata", "default_models_dir", "sidecar_path"]

META_SUFFIX = ".meta.json"
# Environment variable naming the models folder every command and `default_models_dir` use when given none.
MODELS_DIR_ENV = "COINVISION_MODELS_DIR"
# The release models (models/release of the checkout) install as this data package, so an installed SDK finds
# them from any working directory (pyproject.toml: package-dir and package-data).
RELEASE_MODELS_PACKAGE = "coinvision.release_models"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ModelMetadata:
    name: str  # "segmenter" | "embedder"
    architecture: str  # e.g. "unet/tu-efficientnet_b0", "mobilenetv2_100+fc"
    fingerprint: str  # sha256 (hex, 16 chars) of the source checkpoint's weights; packs must match it
    input: InputSpec
    output: str  # "mask_logits" (1xHxW, sigmoid -> probability) | "embedding" (L2-normalised)
    embedding_dim: int | None = None
    l2_normalized: bool = False
    threshold: float | None = None  # segmenter: probability threshold; embedder: unknown-coin cosine
    runtime_format: str = ""  # "onnx" | "tflite" | "coreml" | "torch"
    quantization: str = "fp32"
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["schema_version"] = SCHEMA_VERSION
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelMetadata:
        d = dict(d)
        version = d.pop("schema_version", SCHEMA_VERSION)
        if version > SCHEMA_VERSION:
            raise ModelLoadError(
                f"model metadata schema {version} is newer than this SDK understands ({SCHEMA_VERSION}); "
                "upgrade coinvision"
            )
        try:
            inp = d.pop("input")
            inp = InputSpec(**{**inp, "mean": tuple(inp["mean"]), "std": tuple(inp["std"])})
            return cls(input=inp, **d)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"model metadata is incomplete or invalid: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> ModelMetadata:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ModelLoadError(f"model metadata is not valid JSON: {exc}") from exc

    def write_sidecar(self, model_path: str | Path) -> Path:
        path = sidecar_path(model_path)
        path.write_text(self.to_json())
        return path

    @classmethod
    def read_sidecar(cls, model_path: str | Path) -> ModelMetadata:
        path = sidecar_path(model_path)
        if not path.is_file():
            raise ModelLoadError(f"{model_path}: metadata file {path.name} is missing; re-run coinvision export")
        return cls.from_json(path.read_text())


def sidecar_path(model_path: str | Path) -> Path:
    p = Path(model_path)
    return p.with_name(p.name + META_SUFFIX)


def default_models_dir() -> Path:
    """The models folder to use when none is given: ``$COINVISION_MODELS_DIR`` if set, else the release models
    installed with coinvision (the ``coinvision.release_models`` package, i.e. ``models/release``)."""
    configured = os.environ.get(MODELS_DIR_ENV)
    if configured:
        return Path(configured)
    spec = importlib.util.find_spec(RELEASE_MODELS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"no models folder given and the release models ({RELEASE_MODELS_PACKAGE}) are not installed; "
            f"pass --models DIR or set {MODELS_DIR_ENV}=DIR"
        )
    return Path(next(iter(spec.submodule_search_locations)))
