"""The one exception hierarchy of coinvision.

Every error a user can cause derives from :class:`CoinVisionError`; its message names the bad thing and
the fix. CLIs catch ``CoinVisionError`` and print the message instead of a traceback.
"""

from __future__ import annotations

__all__ = [
    "CoinVisionError",
    "ConfigError",
    "ConversionError",
    "DatasetError",
    "ImageError",
    "ModelLoadError",
    "PackError",
    "ParityError",
    "SyncError",
]


class CoinVisionError(Exception):
    """Base class of every coinvision error."""


class ConfigError(CoinVisionError, ValueError):
    """A configuration value or file is invalid."""


class DatasetError(CoinVisionError):
    """A dataset folder, CSV or split file is missing or malformed."""


class ImageError(CoinVisionError):
    """An image cannot be decoded or is outside the supported limits."""


class ModelLoadError(CoinVisionError):
    """A model file or checkpoint cannot be loaded or does not match its config."""


class ConversionError(CoinVisionError):
    """An export to ONNX / TFLite / Core ML failed or was asked for with invalid options."""


class ParityError(CoinVisionError):
    """A converted model does not compute what the source model computes."""


class PackError(CoinVisionError):
    """A catalog embedding pack is malformed, corrupted, or incompatible."""


class SyncError(CoinVisionError):
    """Syncing a catalog pack from the server failed (the cached pack stays in use)."""
