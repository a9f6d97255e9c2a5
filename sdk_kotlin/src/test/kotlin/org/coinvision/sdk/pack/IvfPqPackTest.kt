package org.coinvision.sdk.pack

import org.coinvision.sdk.PackDeltaException
import org.coinvision.sdk.PackException
import org.coinvision.sdk.PackFormatException
import org.coinvision.sdk.PackQueryException
import org.coinvision.sdk.PackTruncatedException
import org.coinvision.sdk.TestPaths
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.security.MessageDigest

/**
 * ivfpq packs (docs/PACK_FORMAT.md section 8) against `tests/golden/packs/ivfpq.pack` and its `expected.json` entry:
 * the index fields, the pack's own nprobe, every header and section check as a typed error in the reference order,
 * the float32 probe ranking, and the refused deltas. The golden fields, vectors and top-3 are in [GoldenPackTest],
 * the fuzzing in [MutatedPackTest].
 */
class IvfPqPackTest {
    private val dir = TestPaths.goldenPacks
    private val expected = TestPaths.json(File(dir, "expected.json"))
    private val want = expected["packs"]!!["ivfpq.pack"]!!
    private val queries = expected["queries"]!!.list.map { q -> DoubleArray(q.list.size) { q[it].double } }
    private val raw = File(dir, "ivfpq.pack").readBytes()

    /** Byte offsets in ivfpq.pack (L = 2, dim = 8, M = 4): index header at 64, offsets at 80, centroids at 92. */
    private val centroidsAt = 64 + 16 + 4 * 3
    private val codebooksAt = centroidsAt + 4 * 2 * 8
    private val coinIndexAt = codebooksAt + 4 * 256 * 8

    /** A copy of [b] edited by [edit] (little-endian view) and resealed: only the edited field is wrong. */
    private fun resealed(b: ByteArray, edit: (ByteBuffer) -> Unit): ByteArray {
        val out = b.copyOf()
        edit(ByteBuffer.wrap(out).order(ByteOrder.LITTLE_ENDIAN))
        val body = out.copyOfRange(0, out.size - 32)
        MessageDigest.getInstance("SHA-256").digest(body).copyInto(out, out.size - 32)
        return out
    }

    private fun ByteBuffer.u16(at: Int, v: Int) { putShort(at, v.toShort()) }
    private fun ByteBuffer.u32(at: Int, v: Long) { putInt(at, v.toInt()) }

    /** Float64 cosines of [pack]'s dequantised vectors, max per coin: what a full scan of every list would give. */
    private fun bruteForce(pack: Pack, q: DoubleArray): DoubleArray {
        val qn = Math.sqrt(q.sumOf { it * it })
        val out = DoubleArray(pack.coinCount) { Double.NEGATIVE_INFINITY }
        for (i in 0 until pack.vectorCount) {
            val x = pack.vector(i)
            var dot = 0.0
            var ss = 0.0
            for (j in x.indices) { dot += x[j] * q[j]; ss += x[j].toDouble() * x[j] }
            val c = pack.section.coinIndex[i].toInt()
            out[c] = maxOf(out[c], dot / (Math.sqrt(ss) * qn))
        }
        return out
    }

    @Test
    fun `index fields equal expected json and the section is its declared size`() {
        val pack = PackReader.read(raw)
        val ivf = pack.ivfpq!!
        val w = want["ivfpq"]!!
        assertEquals(Quant.IVFPQ, pack.quant)
        assertEquals(w["list_count"]!!.long!!.toInt(), ivf.listCount)
        assertEquals(w["nprobe"]!!.long!!.toInt(), ivf.nprobe)
        assertEquals(w["subspace_count"]!!.long!!.toInt(), ivf.subspaceCount)
        assertEquals(2, ivf.subspaceDim)
        assertArrayEquals(w["list_offsets"]!!.list.map { it.long!! }.toLongArray(), ivf.listOffsets)
        w["centroids"]!!.list.forEachIndexed { l, row ->
            assertArrayEquals(FloatArray(row.list.size) { row[it].double.toFloat() }, ivf.centroid(l), "centroid $l")
        }
        val codes = w["codes"]!!.list.flatMap { r -> r.list.map { it.long!!.toInt() } }
        assertEquals(codes, pack.section.data.map { it.toInt() and 0xff })
        // dequantisation by hand: x_i = c_l + concat_j B[j][code_ij], one float32 addition per component
        val v5 = pack.vector(5) // list 1
        for (j in 0 until 4) {
            val entry = ivf.codebookEntry(j, codes[5 * 4 + j])
            for (t in 0 until 2) assertEquals(ivf.centroid(1)[2 * j + t] + entry[t], v5[2 * j + t])
        }
        assertEquals(16L + 4 * 3 + 4 * 2 * 8 + 4 * 256 * 8 + 8 * (4 + 4), pack.vectorBytes)
        assertEquals(want["size_bytes"]!!.long!!.toInt(), raw.size)
        // canonical from the parsed fields, not only from the cached input
        assertArrayEquals(raw, pack.serialize())
        assertNull(PackReader.read(File(dir, "int8.pack")).ivfpq)
        assertThrows<IllegalStateException> { pack.section.raw(Quant.IVFPQ, 0) }
    }

    @Test
    fun `search scans the pack's own nprobe lists and only their coins are candidates`() {
        val pack = PackReader.read(raw)
        // nprobe 1: query 0 probes list 0 (at-1eur, at-1eur, de-2eur), so two candidate coins
        assertEquals(listOf("at-1eur", "de-2eur"), pack.search(queries[0], 100).map { it.coinId })
        val scores = pack.coinScores(queries[0])
        assertEquals(listOf(true, true, false, false, false, false), scores.map { it != Double.NEGATIVE_INFINITY })
        assertEquals(pack.search(queries[0], 2).map { it.score }, scores.filter { it.isFinite() }.sortedDescending())
        assertEquals(emptyList<Hit>(), pack.search(queries[0], 0))
        assertThrows<PackQueryException> { pack.search(queries[0], -1) }
        assertThrows<PackQueryException> { pack.search(DoubleArray(8)) }
        // float and double queries are the same query
        assertEquals(pack.search(queries[2], 3), pack.search(FloatArray(8) { queries[2][it].toFloat() }, 3))
    }

    @Test
    fun `nprobe = list_count scores every coin, with the lookup table within 1e-5 of float64 cosines`() {
        val all = PackReader.read(resealed(raw) { it.u16(66, 2) })
        assertEquals(2, all.ivfpq!!.nprobe)
        val tol = expected["score_tolerance"]!!.double
        for (q in queries) {
            val hits = all.search(q, 100)
            assertEquals(all.coinCount, hits.size)
            assertEquals(3, all.search(q, 3).size)
            val exact = bruteForce(all, q)
            val scores = all.coinScores(q)
            for (c in 0 until all.coinCount) assertEquals(exact[c], scores[c], tol, "coin $c")
            // best first, equal scores (tie-a, tie-b have identical vectors) in coin-table order
            for (h in 1 until hits.size) {
                val (a, b) = hits[h - 1] to hits[h]
                assertTrue(a.score > b.score || (a.score == b.score && a.coinId < b.coinId), "$a before $b")
            }
        }
    }

    @Test
    fun `equal probe ranks in float32 go to the lower list, as the reference's float32 ranking`() {
        // Both centroids equal but for component 7: 0 in list 0, 1e-10 in list 1. For a query with u_7 > 0 list 1
        // ranks higher by ~1e-10 in exact (or float64) arithmetic, far below float32 precision: the reference's
        // float32 ranks are equal, so the lower list (0) is probed and only its coins are candidates.
        val c0 = FloatArray(8) { ByteBuffer.wrap(raw).order(ByteOrder.LITTLE_ENDIAN).getFloat(centroidsAt + 4 * it) }
        val tied = PackReader.read(resealed(raw) { b ->
            for (t in 0 until 8) {
                b.putFloat(centroidsAt + 4 * t, if (t == 7) 0f else c0[t])
                b.putFloat(centroidsAt + 32 + 4 * t, if (t == 7) 1e-10f else c0[t])
            }
        })
        val ivf = tied.ivfpq!!
        for (qi in 1..3) {
            assertTrue(queries[qi][7] > 0)
            // float64 ranks (the draft's rule) would probe list 1 instead
            val qn = Math.sqrt(queries[qi].sumOf { it * it })
            val rank64 = (0 until 2).map { l ->
                val c = ivf.centroid(l)
                c.indices.sumOf { c[it] * queries[qi][it] / qn } - 0.5 * c.sumOf { it.toDouble() * it }
            }
            assertTrue(rank64[1] > rank64[0], "query $qi: $rank64")
            assertEquals(listOf("at-1eur", "de-2eur"), tied.search(queries[qi], 10).map { it.coinId }.sorted(), "query $qi")
        }
        // and with u_7 < 0 list 0 ranks higher outright
        assertEquals(listOf("at-1eur", "de-2eur"), tied.search(queries[0], 10).map { it.coinId }.sorted())
    }

    @Test
    fun `every index header and section check is its typed error, in the reference order`() {
        val cases: List<Triple<String, (ByteBuffer) -> Unit, Class<out PackException>>> = listOf(
            Triple("list_count 0", { b -> b.u16(64, 0) }, PackFormatException::class.java),
            Triple("nprobe 0", { b -> b.u16(66, 0) }, PackFormatException::class.java),
            Triple("nprobe 3 > list_count 2", { b -> b.u16(66, 3) }, PackFormatException::class.java),
            Triple("subspaces 0", { b -> b.u16(68, 0) }, PackFormatException::class.java),
            Triple("subspaces 3 (does not divide 8)", { b -> b.u16(68, 3) }, PackFormatException::class.java),
            Triple("code_bits 4", { b -> b.u16(70, 4) }, PackFormatException::class.java),
            Triple("reserved", { b -> b.put(79, 1) }, PackFormatException::class.java),
            // the index header is checked before the size: list_count 3 passes its checks, then the size is wrong
            Triple("list_count 3 (size)", { b -> b.u16(64, 3) }, PackTruncatedException::class.java),
            Triple("subspaces 8 (size)", { b -> b.u16(68, 8) }, PackTruncatedException::class.java),
            Triple("subspaces 2 (trailing bytes)", { b -> b.u16(68, 2) }, PackFormatException::class.java),
            Triple("offsets[0] = 1", { b -> b.u32(80, 1) }, PackFormatException::class.java),
            Triple("offsets decrease", { b -> b.u32(84, 9) }, PackFormatException::class.java),
            Triple("offsets[L] != N", { b -> b.u32(88, 7) }, PackFormatException::class.java),
            Triple("centroid NaN", { b -> b.putFloat(centroidsAt, Float.NaN) }, PackFormatException::class.java),
            Triple("codebook inf", { b -> b.putFloat(codebooksAt, Float.POSITIVE_INFINITY) }, PackFormatException::class.java),
            Triple("coin index >= C", { b -> b.u32(coinIndexAt, 6) }, PackFormatException::class.java),
            Triple("coin order in a list", { b -> b.u32(coinIndexAt, 1) }, PackFormatException::class.java),
            Triple("a coin without a vector", { b -> b.u32(coinIndexAt + 4 * 2, 0) }, PackFormatException::class.java),
        )
        for ((what, edit, cls) in cases) {
            val e = assertThrows<PackException>(what) { PackReader.read(resealed(raw, edit)) }
            assertEquals(cls, e.javaClass, "$what: ${e.message}")
            assertTrue(e.message!!.isNotBlank())
        }
        // the named checks say what is wrong and with which value
        val nprobe = assertThrows<PackFormatException> { PackReader.read(resealed(raw) { it.u16(66, 3) }) }
        assertTrue("nprobe 3" in nprobe.message!! && "list_count (2)" in nprobe.message!!, nprobe.message)
        // shorter than the index header: truncated, before any index field is trusted
        assertThrows<PackTruncatedException> { PackReader.read(raw.copyOfRange(0, 100)) }
        for (cut in listOf(111, 112, 500, raw.size - 1)) {
            assertThrows<PackTruncatedException>("first $cut bytes") { PackReader.read(raw.copyOfRange(0, cut)) }
        }
        // a header claiming 2^32 - 1 vectors costs nothing: truncated from 64-bit sizes
        assertThrows<PackTruncatedException> { PackReader.read(resealed(raw) { it.u32(12, 0xffffffffL) }) }
        // a vector decoding to all zeros (centroid 0 = -B[j][code] for vector 0): cosine undefined
        val pack = PackReader.read(raw)
        val codes0 = (0 until 4).map { pack.section.data[it].toInt() and 0xff }
        val zero = resealed(raw) { b ->
            for (j in 0 until 4) for (t in 0 until 2) {
                b.putFloat(centroidsAt + 4 * (2 * j + t), -b.getFloat(codebooksAt + 4 * ((j * 256 + codes0[j]) * 2 + t)))
            }
        }
        val e = assertThrows<PackFormatException> { PackReader.read(zero) }
        assertTrue("all zeros" in e.message!!, e.message)
    }

    @Test
    fun `a coin's vectors may sit in several lists`() {
        // list 0 ends after vector 1: de-2eur moves to list 1, still in coin order there
        val twoLists = PackReader.read(resealed(raw) { it.u32(84, 2) })
        assertEquals(want["vector_coin_ids"]!!.list.map { it.string }, twoLists.vectorCoinIds)
        assertEquals(1, twoLists.vectorsOf("de-2eur").size)
        assertArrayEquals(twoLists.vector(2), twoLists.vectorsOf("de-2eur")[0])
        // vectorsOf gathers a coin's vectors in vector order
        val pack = PackReader.read(raw)
        assertEquals(2, pack.vectorsOf("at-1eur").size)
        assertArrayEquals(pack.vector(1), pack.vectorsOf("at-1eur")[1])
        assertThrows<PackQueryException> { pack.vectorsOf("no-such-coin") }
    }

    @Test
    fun `ivfpq packs have no deltas`() {
        val delta = File(dir, "int8_v1_to_v2.delta").readBytes()
        val ivf = PackReader.read(raw)
        val e = assertThrows<PackDeltaException> { Delta.apply(ivf, delta) }
        assertTrue("ivfpq" in e.message!!, e.message)
        assertThrows<PackDeltaException> { Delta.apply(ivf, Delta.read(delta)) }
        // a delta header declaring quant 4: format, naming ivfpq, whatever the base
        val quant4 = resealed(delta) { it.put(6, 4) }
        val int8 = PackReader.read(File(dir, "int8.pack"))
        for (read in listOf({ Delta.read(quant4) }, { Delta.apply(int8, quant4) }, { Delta.apply(ivf, quant4) })) {
            val f = assertThrows<PackFormatException> { read() }
            assertTrue("ivfpq" in f.message!!, f.message)
        }
    }
}
