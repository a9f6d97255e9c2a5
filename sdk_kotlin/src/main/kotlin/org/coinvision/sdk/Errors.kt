package org.coinvision.sdk

/**
 * The one exception hierarchy of the SDK, mirroring the Python reference SDK's `coinvision.sdk.errors`.
 * Every message names the bad value and the fix.
 */
open class CoinVisionException(message: String, cause: Throwable? = null) : RuntimeException(message, cause)

/** A configuration value is invalid (e.g. `topK` < 1, a threshold outside [-1, 1]). */
open class ConfigException(message: String, cause: Throwable? = null) : CoinVisionException(message, cause)

/** An image cannot be decoded or is outside the supported limits. */
open class ImageException(message: String, cause: Throwable? = null) : CoinVisionException(message, cause)

/** A model file or its metadata cannot be loaded or does not fit the pipeline. */
open class ModelLoadException(message: String, cause: Throwable? = null) : CoinVisionException(message, cause)

/** A catalog embedding pack is malformed, corrupted, or incompatible. */
open class PackException(message: String, cause: Throwable? = null) : CoinVisionException(message, cause)

/** A pack file cannot be read (missing, a directory, unreadable, > 2 GiB). */
open class PackIOException(message: String, cause: Throwable? = null) : PackException(message, cause)

/** The bytes are not a well-formed pack (structure, out-of-range field, non-canonical content, trailing bytes). */
open class PackFormatException(message: String, cause: Throwable? = null) : PackException(message, cause)

/** The pack is shorter than its header says: an interrupted download or copy. */
open class PackTruncatedException(message: String) : PackFormatException(message)

/** Not a pack (or a delta where a pack was expected, or the reverse). */
open class PackMagicException(message: String) : PackFormatException(message)

/** The pack's format version is newer than this SDK reads. */
open class PackVersionException(message: String) : PackException(message)

/** The sha256 stored in the pack does not match its content. */
open class PackChecksumException(message: String) : PackException(message)

/** An embedding dimension does not match (query vector or embedder output). */
open class PackDimException(message: String) : PackException(message)

/** The pack (or delta) was embedded by a different model than the one in use. */
open class PackFingerprintException(message: String) : PackException(message)

/** A delta does not apply to this base pack (other catalog, version, content) or its result hash differs. */
open class PackDeltaException(message: String, cause: Throwable? = null) : PackException(message, cause)

/** Invalid input to build a pack. */
open class PackBuildException(message: String) : PackException(message)

/** Invalid search arguments (non-finite or zero query, negative k). */
open class PackQueryException(message: String) : PackException(message)

/** Syncing a catalog pack from the server failed; the cached pack stays in use. */
open class SyncException(message: String, cause: Throwable? = null) : CoinVisionException(message, cause)
