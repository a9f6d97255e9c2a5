"""coinvision reference SDK: the phone's pipeline without torch (numpy, OpenCV, TFLite/ONNX runtimes).

    from coinvision.sdk import Recognizer, Pack, SyncClient

    recognizer = Recognizer.from_dir(default_models_dir(), pack="catalog.pack")
    result = recognizer.recognize("coin.jpg")

The names below are imported on first use, so ``import coinvision.sdk.errors`` (or any one module) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "CoinVisionError": "errors",
    "Embedding": "recognizer",
    "Match": "recognizer",
    "ModelMetadata": "model_meta",
    "Pack": "pack",
    "Recognizer": "recognizer",
    "Result": "recognizer",
    "Segmentation": "segmenter",
    "Segmenter": "segmenter",
    "SyncClient": "sync_client",
    "default_models_dir": "model_meta",
    "load_image": "images",
    "read_pack": "pack",
}

__all__ = [
    "CoinVisionError",
    "Embedding",
    "Match",
    "ModelMetadata",
    "Pack",
    "Recognizer",
    "Result",
    "Segmentation",
    "Segmenter",
    "SyncClient",
    "default_models_dir",
    "load_image",
    "read_pack",
]

if TYPE_CHECKING:
    from coinvision.sdk.errors import CoinVisionError
    from coinvision.sdk.images import load_image
    from coinvision.sdk.model_meta import ModelMetadata, default_models_dir
    from coinvision.sdk.pack import Pack, read_pack
    from coinvision.sdk.recognizer import Embedding, Match, Recognizer, Result
    from coinvision.sdk.segmenter import Segmentation, Segmenter
    from coinvision.sdk.sync_client import SyncClient


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'coinvision.sdk' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"coinvision.sdk.{module}"), name)
    globals()[name] = value
    return value
