package org.coinvision.sdk.pack

import org.coinvision.sdk.PackChecksumException
import org.coinvision.sdk.PackDimException
import org.coinvision.sdk.PackException
import org.coinvision.sdk.PackFingerprintException
import org.coinvision.sdk.PackFormatException
import org.coinvision.sdk.PackIOException
import org.coinvision.sdk.PackMagicException
import org.coinvision.sdk.PackQueryException
import org.coinvision.sdk.PackTruncatedException
import org.coinvision.sdk.PackVersionException
import java.io.File
import java.io.IOException
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.charset.CharacterCodingException
import java.nio.charset.CodingErrorAction
import java.security.MessageDigest

/**
 * Catalog embedding packs, format v1: the exact bytes of docs/PACK_FORMAT.md.
 *
 * [PackReader.read] parses strictly, in the reference reader's order of checks, and throws only [PackException]
 * subclasses on hostile bytes; nothing is allocated from header counts before the file size is checked against
 * them. A pack that passes is canonical: [Pack.toBytes] gives back the same bytes.
 */
enum class Quant(val code: Int, val width: Int, val label: String) {
    INT8(1, 1, "int8"), FP16(2, 2, "fp16"), FP32(3, 4, "fp32"),

    /**
     * World-sized packs (spec section 8): IVF lists + one-byte product-quantization codes ([width] = one code; the
     * section size is [IvfPq.sectionBytes], not [PackBytes.vectorBytes]). Packs only: deltas refuse it.
     */
    IVFPQ(4, 1, "ivfpq");

    companion object {
        fun ofCode(code: Int): Quant? = entries.firstOrNull { it.code == code }
    }
}

/** What a catalog knows about one coin; [coinId] is its key in the pack. [extra] is kept in key order. */
data class CoinRecord(
    val coinId: String,
    val label: String = "",
    val country: String = "",
    val currency: String = "",
    val denomination: String = "",
    val side: String = "",
    val years: String = "",
    val extra: Map<String, String> = emptyMap(),
)

/** One search hit: a coin and its cosine score (max over the coin's reference vectors). */
data class Hit(val coinId: String, val score: Double)

internal object PackBytes {
    const val FORMAT_VERSION = 1
    const val HEADER_BYTES = 64
    const val CHECKSUM_BYTES = 32
    const val MAX_DIM = 4096
    const val MAX_PACK_BYTES = 1L shl 31
    const val MIN_RECORD_BYTES = 2 * 7 + 2
    val PACK_MAGIC = byteArrayOf(0x43, 0x56, 0x50, 0x4B) // CVPK
    val DELTA_MAGIC = byteArrayOf(0x43, 0x56, 0x50, 0x44) // CVPD
    const val FIX_BUILD = "rebuild the pack with `coinvision pack build` or download it again"

    fun sha256(data: ByteArray, from: Int = 0, to: Int = data.size): ByteArray {
        val md = MessageDigest.getInstance("SHA-256")
        md.update(data, from, to - from)
        return md.digest()
    }

    fun hex(bytes: ByteArray): String = bytes.joinToString("") { "%02x".format(it.toInt() and 0xff) }

    fun u16(b: ByteArray, pos: Int): Int = (b[pos].toInt() and 0xff) or ((b[pos + 1].toInt() and 0xff) shl 8)
    fun u32(b: ByteArray, pos: Int): Long = (u16(b, pos).toLong()) or (u16(b, pos + 2).toLong() shl 16)
    fun i64(b: ByteArray, pos: Int): Long = ByteBuffer.wrap(b, pos, 8).order(ByteOrder.LITTLE_ENDIAN).long

    /** Strict UTF-8 (Java's decoder refuses overlong forms and encoded surrogates). */
    fun decodeUtf8(b: ByteArray, pos: Int, len: Int): String? = try {
        Charsets.UTF_8.newDecoder().onMalformedInput(CodingErrorAction.REPORT)
            .onUnmappableCharacter(CodingErrorAction.REPORT).decode(ByteBuffer.wrap(b, pos, len)).toString()
    } catch (e: CharacterCodingException) {
        null
    }

    /** Order of UTF-8 bytes = order of Unicode code points (not Kotlin's UTF-16 `compareTo`). */
    fun compareCodePoints(a: String, b: String): Int {
        var i = 0
        var j = 0
        while (i < a.length && j < b.length) {
            val ca = a.codePointAt(i)
            val cb = b.codePointAt(j)
            if (ca != cb) return ca.compareTo(cb)
            i += Character.charCount(ca)
            j += Character.charCount(cb)
        }
        return (a.length - i).compareTo(b.length - j)
    }

    fun halfToFloat(h: Int): Float {
        val sign = (h ushr 15) and 1
        val exp = (h ushr 10) and 0x1f
        val mant = h and 0x3ff
        val bits = when {
            exp == 0 && mant == 0 -> sign shl 31
            exp == 0 -> { // subnormal: normalise
                var e = -1
                var m = mant
                do { e++; m = m shl 1 } while (m and 0x400 == 0)
                (sign shl 31) or ((127 - 15 - e) shl 23) or ((m and 0x3ff) shl 13)
            }
            exp == 0x1f -> (sign shl 31) or (0xff shl 23) or (mant shl 13)
            else -> (sign shl 31) or ((exp - 15 + 127) shl 23) or (mant shl 13)
        }
        return java.lang.Float.intBitsToFloat(bits)
    }

    fun readSource(file: File, kind: String): ByteArray {
        try {
            if (!file.exists()) throw PackIOException("$file: no such $kind file; check the path (or sync the catalog first)")
            if (file.isDirectory) throw PackIOException("$file: is a directory, not a $kind file; pass the .pack file")
            val size = file.length()
            if (size > MAX_PACK_BYTES) {
                throw PackIOException("$file: $size bytes is above the $MAX_PACK_BYTES-byte $kind limit; not a pack")
            }
            return file.readBytes()
        } catch (e: IOException) {
            throw PackIOException("$file: cannot read the $kind file (${e.message}); check permissions", e)
        } catch (e: SecurityException) {
            throw PackIOException("$file: cannot read the $kind file (${e.message}); check permissions", e)
        }
    }

    /** Magic and format version: the checks that come before any other field is trusted (spec 1.5 steps 1-3). */
    fun checkEnvelope(buf: ByteArray, magic: ByteArray, kind: String, name: String) {
        val head = buf.copyOfRange(0, minOf(4, buf.size))
        val other = if (magic.contentEquals(PACK_MAGIC)) DELTA_MAGIC else PACK_MAGIC
        val truncated = "$name is only ${buf.size} bytes: truncated (interrupted download); download it again"
        if (head.size < 4 && magic.copyOfRange(0, head.size).contentEquals(head)) throw PackTruncatedException(truncated)
        if (head.contentEquals(other)) {
            val hint = if (kind == "pack") "this is a delta pack: apply it to its base with Delta.apply(base, delta)"
            else "this is a full pack, not a delta: read it with PackReader.read"
            throw PackMagicException("$name: $hint")
        }
        if (!head.contentEquals(magic)) {
            throw PackMagicException(
                "$name does not start with the $kind magic ${String(magic, Charsets.US_ASCII)} (found ${hex(head)}): " +
                    "not a coinvision $kind; check that the right file was downloaded"
            )
        }
        if (buf.size < 6) throw PackTruncatedException(truncated)
        val version = u16(buf, 4)
        if (version > FORMAT_VERSION) {
            throw PackVersionException(
                "$name uses format version $version, newer than the $FORMAT_VERSION this SDK reads; update the app/SDK " +
                    "(or ask the server for a version-1 pack)"
            )
        }
        if (version != FORMAT_VERSION) {
            throw PackFormatException("$name declares format version $version, which never existed; the file is corrupt")
        }
        if (buf.size < HEADER_BYTES + CHECKSUM_BYTES) {
            throw PackTruncatedException(
                "$name is ${buf.size} bytes, less than the ${HEADER_BYTES + CHECKSUM_BYTES}-byte minimum: truncated " +
                    "(interrupted download); download it again"
            )
        }
    }

    fun decodeHeaderCodes(buf: ByteArray, reservedFrom: Int, name: String): Quant {
        val quant = Quant.ofCode(buf[6].toInt() and 0xff)
            ?: throw PackFormatException("$name: unknown quantization code ${buf[6].toInt() and 0xff} (1=int8, 2=fp16, 3=fp32, 4=ivfpq); $FIX_BUILD")
        val metric = buf[7].toInt() and 0xff
        if (metric != 1) throw PackFormatException("$name: unknown metric code $metric (1=cosine); $FIX_BUILD")
        val dim = u16(buf, 8)
        if (dim < 1 || dim > MAX_DIM) throw PackFormatException("$name: embedding dim $dim is outside 1..$MAX_DIM; $FIX_BUILD")
        val flags = u16(buf, 10)
        val reservedNonZero = (reservedFrom until HEADER_BYTES).any { buf[it].toInt() != 0 }
        if (flags != 0 || reservedNonZero) {
            throw PackFormatException("$name: reserved header bytes are not zero (written by an unknown tool); $FIX_BUILD")
        }
        return quant
    }

    fun vectorBytes(n: Long, dim: Int, quant: Quant): Long = n * (4L + (if (quant == Quant.INT8) 4 else 0) + dim.toLong() * quant.width)

    fun checkLengthAndChecksum(buf: ByteArray, expected: Long, name: String) {
        if (buf.size < expected) {
            throw PackTruncatedException(
                "$name is ${buf.size} bytes but its header describes $expected: truncated (interrupted download or " +
                    "corrupt header); download it again"
            )
        }
        if (buf.size > expected) {
            throw PackFormatException(
                "$name is ${buf.size} bytes but its header describes $expected: ${buf.size - expected} trailing bytes " +
                    "(two files concatenated or a corrupt header); download it again"
            )
        }
        val body = buf.size - CHECKSUM_BYTES
        val digest = sha256(buf, 0, body)
        if (!digest.contentEquals(buf.copyOfRange(body, buf.size))) {
            throw PackChecksumException(
                "$name: sha256 of the content does not match the stored checksum: corrupted in transit or on disk; " +
                    "download it again"
            )
        }
    }

    /** The vector section's arrays (copies): coin index, int8 scales (or null), raw little-endian vector bytes. */
    fun readVectors(buf: ByteArray, n: Int, dim: Int, quant: Quant): VectorSection {
        var pos = HEADER_BYTES
        val coinIndex = LongArray(n) { u32(buf, pos + 4 * it) }
        pos += 4 * n
        var scales: IntArray? = null
        if (quant == Quant.INT8) {
            scales = IntArray(n) { u32(buf, pos + 4 * it).toInt() }
            pos += 4 * n
        }
        val data = buf.copyOfRange(pos, pos + n * dim * quant.width)
        return VectorSection(coinIndex, scales, data)
    }

    /** What is wrong with a vector section (null when canonical): grouping, scales, codes, finiteness, zeros. */
    fun arrayProblem(v: VectorSection, coins: Int, dim: Int, quant: Quant): String? {
        val n = v.coinIndex.size
        if ((n == 0) != (coins == 0)) return "$n vectors but $coins coins (every coin needs at least one vector)"
        if (n > 0) {
            var ok = v.coinIndex[0] == 0L && v.coinIndex[n - 1] == (coins - 1).toLong()
            for (i in 1 until n) {
                val step = v.coinIndex[i] - v.coinIndex[i - 1]
                if (step != 0L && step != 1L) ok = false
            }
            if (!ok) return "vectors are not grouped by coin in coin-table order, or a coin has no vector"
        }
        v.scaleBits?.let { bits ->
            for (b in bits) {
                val s = java.lang.Float.intBitsToFloat(b)
                if (!s.isFinite() || s <= 0f) return "an int8 scale is zero, negative or not finite"
            }
        }
        if (quant == Quant.INT8) {
            if (v.data.any { it == (-128).toByte() }) return "an int8 code is -128 (codes are symmetric, -127..127)"
        } else {
            for (i in 0 until n * dim) if (!v.raw(quant, i).isFinite()) return "a vector holds NaN or infinity"
        }
        for (r in 0 until n) {
            if ((0 until dim).all { v.raw(quant, r * dim + it) == 0.0 }) return "a vector is all zeros (cosine undefined)"
        }
        return null
    }
}

/** Raw arrays of a vector section. [scaleBits] are the f32 scales' bits (int8 only); [data] is little-endian. */
internal class VectorSection(val coinIndex: LongArray, val scaleBits: IntArray?, val data: ByteArray) {
    /** Stored value `i` (int8 code, or fp16/fp32 value) as a double. */
    fun raw(quant: Quant, i: Int): Double = when (quant) {
        Quant.INT8 -> data[i].toDouble()
        Quant.FP16 -> PackBytes.halfToFloat(PackBytes.u16(data, 2 * i)).toDouble()
        Quant.FP32 -> java.lang.Float.intBitsToFloat(PackBytes.u32(data, 4 * i).toInt()).toDouble()
        Quant.IVFPQ -> throw IllegalStateException("ivfpq codes are not vector components; decode them with the index")
    }
}

/** Bounds-checked sequential reader over one section of the input (the pack's or delta's table). */
internal class Cursor(private val buf: ByteArray, var pos: Int, private val end: Int, private val section: String) {
    fun take(n: Int, what: String): Int {
        if (n > end - pos) {
            throw PackFormatException(
                "$section: $what at byte $pos runs past the end of the section; the file is corrupt, ${PackBytes.FIX_BUILD}"
            )
        }
        val at = pos
        pos += n
        return at
    }

    fun u16(what: String): Int = PackBytes.u16(buf, take(2, what))

    fun bytes(n: Int, what: String): ByteArray {
        val at = take(n, what)
        return buf.copyOfRange(at, at + n)
    }

    fun text(what: String): String {
        val len = u16(what)
        val at = take(len, what)
        return PackBytes.decodeUtf8(buf, at, len)
            ?: throw PackFormatException("$section: $what is not valid UTF-8; ${PackBytes.FIX_BUILD}")
    }

    fun record(): CoinRecord {
        val v = Array(7) { text("coin ${FIELDS[it]}") }
        if (v[0].isEmpty()) throw PackFormatException("$section: a coin has an empty coin_id; ${PackBytes.FIX_BUILD}")
        val extra = LinkedHashMap<String, String>()
        var previous = ""
        repeat(u16("extra count")) {
            val key = text("extra key")
            if (PackBytes.compareCodePoints(key, previous) <= 0) { // also rejects the empty key
                throw PackFormatException(
                    "$section: extra keys of coin '${v[0]}' are not unique, non-empty and sorted; ${PackBytes.FIX_BUILD}"
                )
            }
            extra[key] = text("extra value")
            previous = key
        }
        return CoinRecord(v[0], v[1], v[2], v[3], v[4], v[5], v[6], extra)
    }

    fun finish() {
        if (pos != end) {
            throw PackFormatException("$section: ${end - pos} unexpected bytes at its end; ${PackBytes.FIX_BUILD}")
        }
    }

    companion object {
        val FIELDS = arrayOf("coin_id", "label", "country", "currency", "denomination", "side", "years")
    }
}

internal object PackWriter {
    fun u16(out: java.io.ByteArrayOutputStream, v: Int) {
        out.write(v and 0xff); out.write((v ushr 8) and 0xff)
    }

    fun u32(out: java.io.ByteArrayOutputStream, v: Long) {
        for (s in 0 until 4) out.write(((v ushr (8 * s)) and 0xff).toInt())
    }

    fun i64(out: java.io.ByteArrayOutputStream, v: Long) {
        for (s in 0 until 8) out.write(((v ushr (8 * s)) and 0xff).toInt())
    }

    fun text(out: java.io.ByteArrayOutputStream, s: String) {
        val raw = s.toByteArray(Charsets.UTF_8)
        u16(out, raw.size); out.write(raw)
    }

    fun record(out: java.io.ByteArrayOutputStream, r: CoinRecord) {
        for (f in listOf(r.coinId, r.label, r.country, r.currency, r.denomination, r.side, r.years)) text(out, f)
        val keys = r.extra.keys.sortedWith(PackBytes::compareCodePoints)
        u16(out, keys.size)
        for (k in keys) { text(out, k); text(out, r.extra.getValue(k)) }
    }
}

/**
 * An immutable, validated pack. Make one with [PackReader.read] or [Delta.apply].
 * Vectors are stored as in the file (int8 codes + scales, fp16, fp32, or ivfpq codes + [ivfpq] index).
 */
class Pack internal constructor(
    val catalogId: String,
    val catalogVersion: Long,
    val createdAt: Long,
    val modelFingerprint: String,
    val quant: Quant,
    val dim: Int,
    internal val section: VectorSection,
    records: List<CoinRecord>,
    originalBytes: ByteArray? = null,
    /** The ivfpq index (quant [Quant.IVFPQ] only; then [section] holds the coin index and the N x M codes). */
    val ivfpq: IvfPqIndex? = null,
) {
    val records: List<CoinRecord> = records.toList()
    val metric: String get() = "cosine"
    val vectorCount: Int get() = section.coinIndex.size
    val coinCount: Int get() = records.size
    private val recordsById: Map<String, CoinRecord> = records.associateBy { it.coinId }
    /** Runs of equal coin index in vector order (int8/fp16/fp32: one run per coin; ivfpq: per list and coin). */
    internal val starts: IntArray
    internal val stops: IntArray
    private val rowNorm: DoubleArray

    /** ivfpq: the list of every vector (null otherwise). */
    private val listOfVector: IntArray?

    /**
     * ivfpq: `float32(1 / ‖x_i‖)` of every dequantised vector, the factor the reference's float32 scores use
     * (null otherwise).
     */
    private val invNorm: FloatArray?
    private var bytesCache: ByteArray? = originalBytes

    init {
        val name = "pack '$catalogId' v$catalogVersion"
        if (catalogId.isEmpty() || modelFingerprint.isEmpty()) {
            throw PackFormatException("$name: empty catalog id or model fingerprint; ${PackBytes.FIX_BUILD}")
        }
        for (i in 1 until records.size) {
            if (PackBytes.compareCodePoints(records[i].coinId, records[i - 1].coinId) <= 0) {
                throw PackFormatException("$name: coin table is not sorted by coin id or has duplicates; ${PackBytes.FIX_BUILD}")
            }
        }
        if ((quant == Quant.IVFPQ) != (ivfpq != null)) {
            throw PackFormatException("$name: quant '${quant.label}' does not match the presence of an ivfpq index")
        }
        val problem = if (ivfpq != null) IvfPq.problem(ivfpq, section, records.size)
        else PackBytes.arrayProblem(section, records.size, dim, quant)
        problem?.let { throw PackFormatException("$name: $it; ${PackBytes.FIX_BUILD}") }
        val n = vectorCount
        val s = ArrayList<Int>()
        val e = ArrayList<Int>()
        for (i in 0 until n) {
            if (i == 0 || section.coinIndex[i] != section.coinIndex[i - 1]) {
                if (i > 0) e.add(i)
                s.add(i)
            }
        }
        if (n > 0) e.add(n)
        starts = s.toIntArray()
        stops = e.toIntArray()
        if (ivfpq == null) {
            listOfVector = null
            invNorm = null
            rowNorm = DoubleArray(n) { r ->
                var acc = 0.0
                for (j in 0 until dim) { val x = section.raw(quant, r * dim + j); acc += x * x }
                Math.sqrt(acc)
            }
        } else {
            // ‖x_i‖ of every dequantised (float32) vector, in float64, once per pack (reference: decoded_norms)
            val lists = IvfPq.listOfVectors(ivfpq, n)
            val row = FloatArray(dim)
            rowNorm = DoubleArray(n) { r ->
                IvfPq.decode(ivfpq, lists[r], section.data, r, row)
                var acc = 0.0
                for (x in row) acc += x.toDouble() * x.toDouble()
                Math.sqrt(acc)
            }
            if (!rowNorm.all { it > 0.0 }) {
                throw PackFormatException(
                    "pack '$catalogId': an ivfpq vector decodes to all zeros (cosine undefined); ${PackBytes.FIX_BUILD}"
                )
            }
            listOfVector = lists
            invNorm = FloatArray(n) { (1.0 / rowNorm[it]).toFloat() }
        }
    }

    /** Read-only `{coinId: record}` lookup. */
    fun record(coinId: String): CoinRecord? = recordsById[coinId]

    /** The coin id of every vector, in vector order. */
    val vectorCoinIds: List<String> get() = section.coinIndex.map { records[it.toInt()].coinId }

    /** int8 scales (null for fp16/fp32/ivfpq). */
    val int8Scales: FloatArray? get() = section.scaleBits?.let { b -> FloatArray(b.size) { java.lang.Float.intBitsToFloat(b[it]) } }

    /**
     * Dequantised vector `i` as float32: int8 `code * scale` (float32 product), fp16 widened, fp32 as stored,
     * ivfpq `centroid + residual` (vectors in the pack's order: list by list).
     */
    fun vector(i: Int): FloatArray {
        if (ivfpq != null) {
            if (i < 0 || i >= vectorCount) throw IndexOutOfBoundsException("vector $i of $vectorCount")
            return IvfPq.decode(ivfpq, listOfVector!![i], section.data, i)
        }
        val out = FloatArray(dim)
        val scale = section.scaleBits?.let { java.lang.Float.intBitsToFloat(it[i]) }
        for (j in 0 until dim) {
            val raw = section.raw(quant, i * dim + j)
            out[j] = if (scale != null) raw.toFloat() * scale else raw.toFloat()
        }
        return out
    }

    /**
     * Bytes of the vector section: vectors + per-vector coin index (+ int8 scale; + the ivfpq index header, list
     * offsets, centroids and codebooks); the coin table excluded.
     */
    val vectorBytes: Long
        get() = ivfpq?.let { IvfPq.sectionBytes(vectorCount.toLong(), dim, it.listCount, it.subspaceCount) }
            ?: PackBytes.vectorBytes(vectorCount.toLong(), dim, quant)

    /**
     * Dequantised vectors of one coin, in vector order. ivfpq: a coin's vectors may sit in several lists, so they
     * are gathered from all of them (in list order). Throws [PackQueryException] for a coin not in the pack.
     */
    fun vectorsOf(coinId: String): List<FloatArray> {
        val c = records.indexOfFirst { it.coinId == coinId }
        if (c < 0) throw PackQueryException("coin '$coinId' is not in pack '$catalogId'; check the coin id (see records)")
        return (0 until vectorCount).filter { section.coinIndex[it] == c.toLong() }.map { vector(it) }
    }

    /** Canonical bytes (for a read pack: the bytes it was read from). */
    fun toBytes(): ByteArray {
        bytesCache?.let { return it.copyOf() }
        val sealed = serialize()
        bytesCache = sealed
        return sealed.copyOf()
    }

    /** The canonical bytes, always serialised from the parsed fields (never the cached input). */
    internal fun serialize(): ByteArray {
        val table = java.io.ByteArrayOutputStream()
        PackWriter.text(table, catalogId)
        PackWriter.text(table, modelFingerprint)
        for (r in records) PackWriter.record(table, r)
        val out = java.io.ByteArrayOutputStream()
        out.write(PackBytes.PACK_MAGIC)
        PackWriter.u16(out, PackBytes.FORMAT_VERSION)
        out.write(quant.code); out.write(1)
        PackWriter.u16(out, dim); PackWriter.u16(out, 0)
        PackWriter.u32(out, vectorCount.toLong()); PackWriter.u32(out, coinCount.toLong())
        PackWriter.u32(out, catalogVersion); PackWriter.i64(out, createdAt)
        PackWriter.u32(out, table.size().toLong())
        out.write(ByteArray(28))
        ivfpq?.let { ivf ->
            PackWriter.u16(out, ivf.listCount); PackWriter.u16(out, ivf.nprobe)
            PackWriter.u16(out, ivf.subspaceCount); PackWriter.u16(out, IvfPq.CODE_BITS)
            out.write(ByteArray(8))
            for (o in ivf.offsets) PackWriter.u32(out, o)
            for (x in ivf.centroids) PackWriter.u32(out, java.lang.Float.floatToRawIntBits(x).toLong() and 0xffffffffL)
            for (x in ivf.codebooks) PackWriter.u32(out, java.lang.Float.floatToRawIntBits(x).toLong() and 0xffffffffL)
        }
        for (c in section.coinIndex) PackWriter.u32(out, c)
        section.scaleBits?.forEach { PackWriter.u32(out, it.toLong() and 0xffffffffL) }
        out.write(section.data)
        table.writeTo(out)
        val body = out.toByteArray()
        return body + PackBytes.sha256(body)
    }

    /** Hex sha256 of [toBytes]. */
    val sha256: String by lazy { PackBytes.hex(PackBytes.sha256(toBytes())) }

    /**
     * Top-[k] coins for one query, best first. A coin's score is the max cosine over its vectors, computed in
     * float64 (for int8 the scale cancels: codes are used directly); equal scores keep coin-table order.
     *
     * ivfpq (spec 8.3): only the vectors of the pack's own `nprobe` lists nearest the query are scored, with the
     * reference's float32 lookup tables (scores within 1e-5 of the reference, as the golden tests allow), and only
     * coins with a vector in a probed list are candidates: fewer than [k] hits when fewer coins are.
     */
    fun search(query: FloatArray, k: Int = 5): List<Hit> = search(DoubleArray(query.size) { query[it].toDouble() }, k)

    fun search(query: DoubleArray, k: Int = 5): List<Hit> {
        if (k < 0) throw PackQueryException("k=$k: pass the number of coins wanted (an integer >= 1)")
        if (ivfpq != null) {
            val u = unitQuery(query)
            if (k == 0 || vectorCount == 0) return emptyList()
            val cand = IvfPq.candidates(ivfpq, section, invNorm!!, coinCount, u)
            val order = (0 until coinCount).filter { cand.scored[it] }.sortedWith(IvfPq.descendingNaNLast(cand.best))
            return order.take(k).map { Hit(records[it].coinId, cand.best[it].toDouble()) }
        }
        val scores = coinScores(query)
        if (k == 0 || scores.isEmpty()) return emptyList()
        val order = scores.indices.sortedWith(compareBy<Int>({ -scores[it] }, { it }))
        return order.take(k).map { Hit(records[it].coinId, scores[it]) }
    }

    /**
     * Max cosine of every coin (coin-table order) for one query. ivfpq: the float32 lookup-table scores of
     * [search]; coins with no vector in a probed list are not candidates and get `-Infinity`.
     */
    fun coinScores(query: DoubleArray): DoubleArray {
        if (ivfpq != null) {
            val u = unitQuery(query)
            val out = DoubleArray(coinCount) { Double.NEGATIVE_INFINITY }
            if (vectorCount == 0) return out
            val cand = IvfPq.candidates(ivfpq, section, invNorm!!, coinCount, u)
            for (c in 0 until coinCount) if (cand.scored[c]) out[c] = cand.best[c].toDouble()
            return out
        }
        val qn = checkQuery(query)
        val out = DoubleArray(coinCount) { Double.NEGATIVE_INFINITY }
        for (i in 0 until vectorCount) {
            var dot = 0.0
            for (j in 0 until dim) dot += section.raw(quant, i * dim + j) * query[j]
            val s = dot / (rowNorm[i] * qn)
            val c = section.coinIndex[i].toInt()
            if (s > out[c]) out[c] = s
        }
        return out
    }

    /** The query checks of spec section 3 (length, finite, non-zero); returns `‖q‖` (float64). */
    private fun checkQuery(query: DoubleArray): Double {
        if (query.size != dim) {
            throw PackDimException(
                "query has ${query.size} values but pack '$catalogId' holds $dim-d vectors of model $modelFingerprint: " +
                    "pass a $dim-d embedding from that model"
            )
        }
        if (query.any { !it.isFinite() }) throw PackQueryException("query holds NaN or infinity; check the embedder output")
        val qn = Math.sqrt(query.sumOf { it * it })
        if (qn == 0.0) throw PackQueryException("query is all zeros: cosine is undefined; check the embedder output")
        return qn
    }

    /** `float32(q / ‖q‖)` (the division in float64): the unit query the ivfpq reference scores with. */
    private fun unitQuery(query: DoubleArray): FloatArray {
        val qn = checkQuery(query)
        return FloatArray(dim) { (query[it] / qn).toFloat() }
    }

    /** Refuse a pack whose vectors were made by another embedder (not comparable with this one's). */
    fun checkFingerprint(expected: String) {
        if (modelFingerprint != expected) {
            throw PackFingerprintException(
                "pack '$catalogId' v$catalogVersion was embedded by model $modelFingerprint, but the embedder in use is " +
                    "$expected: embeddings of different models are not comparable; rebuild the pack with this model " +
                    "(coinvision pack build) or sync the catalog for this model"
            )
        }
    }

    fun checkDim(expected: Int) {
        if (dim != expected) {
            throw PackDimException(
                "pack '$catalogId' holds $dim-d vectors but the embedder outputs $expected-d ones; use a pack built with " +
                    "this embedder"
            )
        }
    }

    override fun toString(): String =
        "Pack(catalogId='$catalogId', catalogVersion=$catalogVersion, quant=${quant.label}, dim=$dim, " +
            "coins=$coinCount, vectors=$vectorCount, modelFingerprint='$modelFingerprint')"
}

/** Reads packs (spec section 1.5, every check in order). */
object PackReader {
    fun read(file: File, expectedFingerprint: String? = null, expectedDim: Int? = null): Pack =
        read(PackBytes.readSource(file, "pack"), expectedFingerprint, expectedDim, "pack file $file")

    fun read(bytes: ByteArray, expectedFingerprint: String? = null, expectedDim: Int? = null, name: String = "pack"): Pack {
        val pack = try {
            parse(bytes, name)
        } catch (e: PackException) {
            throw e
        } catch (e: RuntimeException) { // defence in depth: never a crash on hostile bytes
            throw PackFormatException("$name: malformed (${e.javaClass.simpleName}: ${e.message}); ${PackBytes.FIX_BUILD}", e)
        } catch (e: OutOfMemoryError) {
            throw PackFormatException("$name: malformed (out of memory); ${PackBytes.FIX_BUILD}", null)
        }
        expectedFingerprint?.let { pack.checkFingerprint(it) }
        expectedDim?.let { pack.checkDim(it) }
        return pack
    }

    private fun parse(buf: ByteArray, name: String): Pack {
        PackBytes.checkEnvelope(buf, PackBytes.PACK_MAGIC, "pack", name)
        val quant = PackBytes.decodeHeaderCodes(buf, 36, name)
        val dim = PackBytes.u16(buf, 8)
        val n = PackBytes.u32(buf, 12)
        val coins = PackBytes.u32(buf, 16)
        val version = PackBytes.u32(buf, 20)
        val createdAt = PackBytes.i64(buf, 24)
        val tableBytes = PackBytes.u32(buf, 32)
        // ivfpq: the index header's own checks come before the size check (spec 8.1), since VB depends on it
        val shape = if (quant == Quant.IVFPQ) IvfPq.readHeader(buf, dim, name) else null
        // 64-bit sizes, checked against the real length before anything is allocated from them
        val vb = if (shape != null) IvfPq.sectionBytes(n, dim, shape.lists, shape.subspaces)
        else PackBytes.vectorBytes(n, dim, quant)
        val expected = PackBytes.HEADER_BYTES + vb + tableBytes + PackBytes.CHECKSUM_BYTES
        PackBytes.checkLengthAndChecksum(buf, expected, name)
        if (coins > n || coins * PackBytes.MIN_RECORD_BYTES > tableBytes) {
            throw PackFormatException("$name: header claims $coins coins for $n vectors and a $tableBytes-byte table; ${PackBytes.FIX_BUILD}")
        }
        val ivf = shape?.let { IvfPq.readSection(buf, n.toInt(), dim, it) }
        val section = ivf?.second ?: PackBytes.readVectors(buf, n.toInt(), dim, quant)
        val cur = Cursor(buf, (PackBytes.HEADER_BYTES + vb).toInt(), (expected - PackBytes.CHECKSUM_BYTES).toInt(), "$name table")
        val catalogId = cur.text("catalog id")
        val fingerprint = cur.text("model fingerprint")
        val records = List(coins.toInt()) { cur.record() }
        cur.finish()
        return Pack(catalogId, version, createdAt, fingerprint, quant, dim, section, records, buf.copyOf(), ivf?.first)
    }
}
