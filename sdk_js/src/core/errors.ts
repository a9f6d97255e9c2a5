/**
 * The one error hierarchy of the coinvision SDKs, mirroring the Python reference (`coinvision.sdk.errors`).
 * Every error a caller can cause derives from {@link CoinVisionError}; its message names the bad value and the fix.
 */

export class CoinVisionError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A configuration value is invalid (threshold, top_k, runtime name...). */
export class ConfigError extends CoinVisionError {}
/** An image cannot be decoded or is outside the supported limits. */
export class ImageError extends CoinVisionError {}
/** A model file or its metadata cannot be loaded or do not fit each other. */
export class ModelLoadError extends CoinVisionError {}

/** A catalog embedding pack is malformed, corrupted, or incompatible. */
export class PackError extends CoinVisionError {}
/** A pack file cannot be read (missing, unreadable, too large). */
export class PackIOError extends PackError {}
/** The bytes are not a well-formed pack (bad structure, out-of-range field, non-canonical content). */
export class PackFormatError extends PackError {}
/** The pack is shorter than its header says: an interrupted download or copy. */
export class PackTruncatedError extends PackFormatError {}
/** The bytes do not start with the pack magic: not a pack (or a delta where a pack was expected). */
export class PackMagicError extends PackFormatError {}
/** The pack uses a format version this SDK does not read (written by a newer tool). */
export class PackVersionError extends PackError {}
/** The pack's sha256 does not match its content: corrupted in transit or on disk. */
export class PackChecksumError extends PackError {}
/** An embedding dimension does not match the pack's (query vector or expected embedder output). */
export class PackDimError extends PackError {}
/** The pack was embedded by a different model than the one in use; its vectors are not comparable. */
export class PackFingerprintError extends PackError {}
/** A delta pack does not apply to this base pack (other catalog, version, content). */
export class PackDeltaError extends PackError {}
/** Invalid input to build a pack. */
export class PackBuildError extends PackError {}
/** Invalid search arguments (non-finite or zero query, negative k). */
export class PackQueryError extends PackError {}

/** Syncing a catalog pack from the server failed (the cached pack stays in use). */
export class SyncError extends CoinVisionError {}
