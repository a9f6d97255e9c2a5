package org.coinvision.sdk.pack

import org.coinvision.sdk.PackFormatException
import org.coinvision.sdk.PackTruncatedException

/**
 * The index of an `ivfpq` pack (docs/PACK_FORMAT.md section 8; reference `sdk_python/pack_ivfpq.py`): [listCount]
 * coarse centroids, [subspaceCount] product-quantization codebooks of 256 entries, the list offsets and the number
 * of lists a search scans ([nprobe], from the pack: searches always use the pack's value).
 *
 * Arrays are kept as read; the accessors return copies.
 */
class IvfPqIndex internal constructor(
    val dim: Int,
    val nprobe: Int,
    val subspaceCount: Int,
    internal val offsets: LongArray, // L + 1
    internal val centroids: FloatArray, // L * dim, row-major
    internal val codebooks: FloatArray, // M * 256 * (dim / M), row-major
) {
    val listCount: Int get() = offsets.size - 1
    val subspaceDim: Int get() = dim / subspaceCount

    /** `list_offsets` (L + 1 values): list `l` holds vectors `listOffsets[l] until listOffsets[l + 1]`. */
    val listOffsets: LongArray get() = offsets.copyOf()

    /** Centroid `c_l` of list [list]. */
    fun centroid(list: Int): FloatArray = centroids.copyOfRange(list * dim, (list + 1) * dim)

    /** Codebook entry `B[subspace][entry]` (a `dim / M`-vector). */
    fun codebookEntry(subspace: Int, entry: Int): FloatArray {
        val at = (subspace * IvfPq.CODEBOOK_SIZE + entry) * subspaceDim
        return codebooks.copyOfRange(at, at + subspaceDim)
    }
}

internal object IvfPq {
    const val CODEBOOK_SIZE = 256
    const val INDEX_HEADER_BYTES = 16
    const val CODE_BITS = 8

    class Shape(val lists: Int, val nprobe: Int, val subspaces: Int)

    /** Bytes of an ivfpq vector section (spec 8.1), in 64-bit arithmetic: a hostile header cannot overflow it. */
    fun sectionBytes(n: Long, dim: Int, lists: Int, subspaces: Int): Long =
        INDEX_HEADER_BYTES + 4L * (lists + 1) + 4L * lists * dim + 4L * CODEBOOK_SIZE * dim + n * (4L + subspaces)

    /** The 16-byte index header, each field checked (spec 8.1, in the reference reader's order). */
    fun readHeader(buf: ByteArray, dim: Int, name: String): Shape {
        val h = PackBytes.HEADER_BYTES
        if (buf.size < h + INDEX_HEADER_BYTES + PackBytes.CHECKSUM_BYTES) {
            throw PackTruncatedException(
                "$name is ${buf.size} bytes, too short for its ivfpq index header: truncated (interrupted download); " +
                    "download it again"
            )
        }
        val lists = PackBytes.u16(buf, h)
        val nprobe = PackBytes.u16(buf, h + 2)
        val subspaces = PackBytes.u16(buf, h + 4)
        val codeBits = PackBytes.u16(buf, h + 6)
        val fix = PackBytes.FIX_BUILD
        if (lists < 1) throw PackFormatException("$name: ivfpq list_count is 0 (must be 1..65535); $fix")
        if (nprobe < 1 || nprobe > lists) {
            throw PackFormatException("$name: ivfpq nprobe $nprobe is outside 1..list_count ($lists); $fix")
        }
        if (subspaces < 1 || dim % subspaces != 0) {
            throw PackFormatException("$name: ivfpq subspace_count $subspaces does not divide dim $dim (must be >= 1); $fix")
        }
        if (codeBits != CODE_BITS) throw PackFormatException("$name: ivfpq code_bits $codeBits is not 8 (the only code size); $fix")
        if ((h + 8 until h + 16).any { buf[it].toInt() != 0 }) {
            throw PackFormatException("$name: ivfpq reserved bytes are not zero (written by an unknown tool); $fix")
        }
        return Shape(lists, nprobe, subspaces)
    }

    /** Index, coin index and codes (copies); the caller has checked the file size against [sectionBytes]. */
    fun readSection(buf: ByteArray, n: Int, dim: Int, shape: Shape): Pair<IvfPqIndex, VectorSection> {
        var pos = PackBytes.HEADER_BYTES + INDEX_HEADER_BYTES
        val offsets = LongArray(shape.lists + 1) { PackBytes.u32(buf, pos + 4 * it) }
        pos += 4 * (shape.lists + 1)
        val centroids = FloatArray(shape.lists * dim) { f32(buf, pos + 4 * it) }
        pos += 4 * shape.lists * dim
        val codebooks = FloatArray(CODEBOOK_SIZE * dim) { f32(buf, pos + 4 * it) }
        pos += 4 * CODEBOOK_SIZE * dim
        val coinIndex = LongArray(n) { PackBytes.u32(buf, pos + 4 * it) }
        pos += 4 * n
        val codes = buf.copyOfRange(pos, pos + n * shape.subspaces)
        return IvfPqIndex(dim, shape.nprobe, shape.subspaces, offsets, centroids, codebooks) to
            VectorSection(coinIndex, null, codes)
    }

    private fun f32(b: ByteArray, pos: Int): Float = java.lang.Float.intBitsToFloat(PackBytes.u32(b, pos).toInt())

    /** What is wrong with an ivfpq section (null when canonical), in the reference's order (`_ivf_problem`). */
    fun problem(index: IvfPqIndex, v: VectorSection, coins: Int): String? {
        val n = v.coinIndex.size
        if ((n == 0) != (coins == 0)) return "$n vectors but $coins coins (every coin needs at least one vector)"
        val off = index.offsets
        var offsetsOk = off[0] == 0L && off[off.size - 1] == n.toLong()
        for (l in 1 until off.size) if (off[l] < off[l - 1]) offsetsOk = false
        if (!offsetsOk) return "ivfpq list offsets do not run from 0 to vector_count ($n) without decreasing"
        if (!index.centroids.all { it.isFinite() } || !index.codebooks.all { it.isFinite() }) {
            return "an ivfpq centroid or codebook entry holds NaN or infinity"
        }
        if (n > 0) {
            if (v.coinIndex.any { it >= coins }) return "a coin index is >= coin_count ($coins)"
            val seen = BooleanArray(coins)
            for (c in v.coinIndex) seen[c.toInt()] = true
            if (!seen.all { it }) return "a coin has no vector"
            // Canonical order: within a list, vectors ascend by coin (the builder's stable order).
            val listStart = BooleanArray(n)
            for (l in 1 until off.size - 1) if (off[l] < n) listStart[off[l].toInt()] = true
            for (i in 1 until n) {
                if (v.coinIndex[i] < v.coinIndex[i - 1] && !listStart[i]) return "vectors of an ivfpq list are not in coin order"
            }
        }
        if (v.data.size != n * index.subspaceCount) return "ivfpq codes do not match the vector count"
        return null
    }

    /** List index of every vector, from the (validated) offsets. */
    fun listOfVectors(index: IvfPqIndex, n: Int): IntArray {
        val out = IntArray(n)
        for (l in 0 until index.listCount) {
            for (i in index.offsets[l].toInt() until index.offsets[l + 1].toInt()) out[i] = l
        }
        return out
    }

    /** Dequantised vector: `c_l + concat_j B[j][code_j]`, one float32 addition per component (bit-exact). */
    fun decode(index: IvfPqIndex, list: Int, codes: ByteArray, row: Int, out: FloatArray = FloatArray(index.dim)): FloatArray {
        val dim = index.dim
        val m = index.subspaceCount
        val d = index.subspaceDim
        for (j in 0 until m) {
            val entry = codes[row * m + j].toInt() and 0xff
            val at = (j * CODEBOOK_SIZE + entry) * d
            for (t in 0 until d) {
                val c = j * d + t
                out[c] = index.centroids[list * dim + c] + index.codebooks[at + t]
            }
        }
        return out
    }

    /**
     * The [IvfPqIndex.nprobe] lists to scan for a unit float32 query [u] (spec 8.3 step 1, reference `probed_lists`),
     * and `u · c_l` of every list (float32).
     *
     * Lists are ranked by `r_l = u · c_l − ‖c_l‖² / 2` (the order of the L2 distance from `u` to `c_l`: the rule that
     * assigned the vectors to lists), highest first. The rank is a float32, as the reference's (`coarse − half_sq`
     * of two float32 arrays), not a double: two lists whose ranks differ only below float32 precision are a tie
     * there, and a tie goes to the lower list index, so a double rank could probe another list than the reference.
     * The dot products are summed in double and rounded once (closer to exact than any float32 summation order).
     * NaN ranks (only from centroids near the float32 limit, whose squares overflow) come last, as numpy sorts them.
     */
    fun probe(index: IvfPqIndex, u: FloatArray): Pair<IntArray, FloatArray> {
        val dim = index.dim
        val lists = index.listCount
        val coarse = FloatArray(lists)
        val rank = FloatArray(lists)
        for (l in 0 until lists) {
            var dot = 0.0
            var sq = 0.0
            for (c in 0 until dim) {
                val x = index.centroids[l * dim + c].toDouble()
                dot += x * u[c]
                sq += x * x
            }
            coarse[l] = dot.toFloat()
            rank[l] = coarse[l] - 0.5f * sq.toFloat()
        }
        val order = (0 until lists).sortedWith(descendingNaNLast(rank))
        return order.take(index.nprobe).toIntArray() to coarse
    }

    /** Indices by value, highest first, NaN last, equal values by lower index (numpy `lexsort((idx, -value))`). */
    fun descendingNaNLast(value: FloatArray): Comparator<Int> = Comparator { a, b ->
        val va = value[a]
        val vb = value[b]
        when {
            va.isNaN() || vb.isNaN() -> if (va.isNaN() == vb.isNaN()) a.compareTo(b) else if (va.isNaN()) 1 else -1
            va > vb -> -1
            va < vb -> 1
            else -> a.compareTo(b) // equal, including 0.0 and -0.0 (equal for numpy's sort too)
        }
    }

    /** The candidates of one search: [best] score of every coin (float32), meaningful where [scored] is set. */
    class Candidates(val scored: BooleanArray, val best: FloatArray)

    /**
     * Scores of the vectors in the probed lists for one unit float32 query (spec 8.3 steps 2-3, reference
     * `probed_scores` and `Pack._search_ivf`), and the best of each coin.
     *
     * `s_i = (u · c_l + Σ_j T[j][codes[i][j]]) · (1 / ‖x_i‖)` in float32, summed in the reference's order: the coarse
     * dot first, then the table entries of sub-spaces 0..M−1, then one product with the float32 inverse norm
     * ([invNorm]). `T[j][k] = u_j · B[j][k]` is a float32 dot of `d` products. A coin's score is the maximum over
     * its scored vectors (NaN only when all of them are NaN, as numpy's sort puts NaN last); coins with no vector
     * in a probed list are not candidates.
     */
    fun candidates(index: IvfPqIndex, v: VectorSection, invNorm: FloatArray, coins: Int, u: FloatArray): Candidates {
        val m = index.subspaceCount
        val d = index.subspaceDim
        val (probe, coarse) = probe(index, u)
        val table = FloatArray(m * CODEBOOK_SIZE)
        for (j in 0 until m) {
            for (k in 0 until CODEBOOK_SIZE) {
                val entry = (j * CODEBOOK_SIZE + k) * d
                var s = 0f
                for (t in 0 until d) s += u[j * d + t] * index.codebooks[entry + t]
                table[j * CODEBOOK_SIZE + k] = s
            }
        }
        val scored = BooleanArray(coins)
        val best = FloatArray(coins) { Float.NEGATIVE_INFINITY }
        val codes = v.data
        for (l in probe) {
            for (i in index.offsets[l].toInt() until index.offsets[l + 1].toInt()) {
                var s = coarse[l]
                for (j in 0 until m) s += table[j * CODEBOOK_SIZE + (codes[i * m + j].toInt() and 0xff)]
                s *= invNorm[i]
                val c = v.coinIndex[i].toInt()
                val prev = best[c]
                if (!scored[c] || s > prev || (prev.isNaN() && !s.isNaN())) best[c] = s
                scored[c] = true
            }
        }
        return Candidates(scored, best)
    }
}
