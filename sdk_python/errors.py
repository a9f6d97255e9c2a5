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
    "PackBuildError",
    "PackChecksumError",
    "PackDeltaError",
    "PackDimError",
    "PackError",
    "PackFingerprintError",
    "PackFormatError",
    "PackIOError",
    "PackMagicError",
    "PackQueryError",
    "PackTruncatedError",
    "PackVersionError",
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


class PackIOError(PackError):
    """A pack file cannot be read (missing, unreadable, too large)."""


class PackFormatError(PackError):
    """The bytes are not a well-formed pack (bad structure, out-of-range field, non-canonical content)."""


class PackTruncatedError(PackFormatError):
    """The pack is shorter than its header says: an interrupted download or copy."""


class PackMagicError(PackFormatError):
    """The bytes do not start with the pack magic: not a pack (or a delta where a pack was expected)."""


class PackVersionError(PackError):
    """The pack uses a format version this SDK does not read (written by a newer tool)."""


class PackChecksumError(PackError):
    """The pack's sha256 does not match its content: corrupted in transit or on disk."""


class PackDimError(PackError):
    """An embedding dimension does not match the pack's (query vector or expected embedder output)."""


class PackFingerprintError(PackError):
    """The pack was embedded by a different model than the one in use; its vectors are not comparable."""


class PackDeltaError(PackError):
    """A delta pack does not apply to this base pack (other catalog, version, content) or cannot be built."""


class PackBuildError(PackError, ValueError):
    """Invalid input to build a pack (vectors, coin ids, records, header fields)."""


class PackQueryError(PackError, ValueError):
    """Invalid search arguments (non-finite or zero query, negative k)."""


class SyncError(CoinVisionError):
    """Syncing a catalog pack from the server failed (the cached pack stays in use)."""
