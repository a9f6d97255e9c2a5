package org.coinvision.sdk.pack

import org.coinvision.sdk.JsonValue
import org.coinvision.sdk.PackChecksumException
import org.coinvision.sdk.PackDeltaException
import org.coinvision.sdk.PackDimException
import org.coinvision.sdk.PackException
import org.coinvision.sdk.PackFingerprintException
import org.coinvision.sdk.PackFormatException
import org.coinvision.sdk.PackIOException
import org.coinvision.sdk.PackMagicException
import org.coinvision.sdk.PackQueryException
import org.coinvision.sdk.PackTruncatedException
import org.coinvision.sdk.PackVersionException
import org.coinvision.sdk.TestPaths
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import org.junit.jupiter.api.io.TempDir
import java.io.File

/** The golden packs of tests/golden/packs against expected.json (docs/PACK_FORMAT.md section 6). */
class GoldenPackTest {
    private val dir = TestPaths.goldenPacks
    private val expected = TestPaths.json(File(dir, "expected.json"))
    private val tolerance = expected["score_tolerance"]!!.double
    private val queries = expected["queries"]!!.list.map { q -> DoubleArray(q.list.size) { q[it].double } }

    private fun bytes(name: String) = File(dir, name).readBytes()

    @Test
    fun `every golden pack parses to the expected fields, vectors and search results`() {
        val packs = expected["packs"]!!.obj
        assertEquals(5, packs.size) // int8, fp16, fp32, int8_v2, ivfpq
        for ((name, want) in packs) {
            val raw = bytes(name)
            val pack = PackReader.read(File(dir, name))
            val h = want["header"]!!
            assertEquals(want["size_bytes"]!!.long!!.toInt(), raw.size, name)
            assertEquals(want["sha256"]!!.string, pack.sha256, name)
            assertEquals(h["catalog_id"]!!.string, pack.catalogId)
            assertEquals(h["catalog_version"]!!.long, pack.catalogVersion)
            assertEquals(h["created_at"]!!.long, pack.createdAt)
            assertEquals(h["dim"]!!.long!!.toInt(), pack.dim)
            assertEquals(h["quant"]!!.string, pack.quant.label)
            assertEquals(h["metric"]!!.string, pack.metric)
            assertEquals(h["vector_count"]!!.long!!.toInt(), pack.vectorCount)
            assertEquals(h["coin_count"]!!.long!!.toInt(), pack.coinCount)
            assertEquals(h["model_fingerprint"]!!.string, pack.modelFingerprint)
            assertEquals(want["vector_coin_ids"]!!.list.map { it.string }, pack.vectorCoinIds, name)
            // dequantised vectors bit-exact as float32
            want["vectors_dequantised"]!!.list.forEachIndexed { i, row ->
                val expectedRow = FloatArray(row.list.size) { row[it].double.toFloat() }
                assertArrayEquals(expectedRow, pack.vector(i), "$name vector $i")
            }
            val scales = want["int8_scales"]
            if (scales is org.coinvision.sdk.JsonArray) {
                assertArrayEquals(FloatArray(scales.items.size) { scales[it].double.toFloat() }, pack.int8Scales, name)
            } else {
                assertEquals(null, pack.int8Scales)
            }
            want["records"]!!.list.forEachIndexed { i, r -> assertEquals(record(r), pack.records[i], "$name record $i") }
            // canonical: re-serialising gives the same bytes, also when serialised from the parsed fields
            assertArrayEquals(raw, pack.toBytes(), name)
            assertArrayEquals(raw, pack.serialize(), name)
            assertEquals(h["quant"]!!.string == "ivfpq", pack.ivfpq != null, name)
            want["search"]!!.list.forEachIndexed { qi, hits ->
                val got = pack.search(queries[qi], expected["top_k"]!!.long!!.toInt())
                assertEquals(hits.list.map { it[0].string }, got.map { it.coinId }, "$name query $qi ids")
                hits.list.zip(got).forEach { (w, g) -> assertEquals(w[1].double, g.score, tolerance, "$name query $qi") }
            }
        }
    }

    private fun record(r: JsonValue) = CoinRecord(
        r["coin_id"]!!.string!!, r["label"]!!.string!!, r["country"]!!.string!!, r["currency"]!!.string!!,
        r["denomination"]!!.string!!, r["side"]!!.string!!, r["years"]!!.string!!,
        r["extra"]!!.obj.mapValues { it.value.string!! },
    )

    @Test
    fun `the delta turns int8 pack into int8_v2 byte for byte`() {
        for ((name, want) in expected["deltas"]!!.obj) {
            val delta = Delta.read(File(dir, name))
            assertEquals(want["base_version"]!!.long, delta.baseVersion)
            assertEquals(want["new_version"]!!.long, delta.newVersion)
            assertEquals(want["new_created_at"]!!.long, delta.newCreatedAt)
            assertEquals(want["base_sha256"]!!.string, delta.baseSha256)
            assertEquals(want["new_sha256"]!!.string, delta.newSha256)
            assertEquals(want["removed"]!!.list.map { it.string }, delta.removed)
            assertEquals(want["upserted"]!!.list.map { it.string }, delta.upserts.map { it.coinId })
            val base = PackReader.read(bytes(want["base"]!!.string!!))
            val result = Delta.apply(base, bytes(name))
            assertArrayEquals(bytes(want["result"]!!.string!!), result.toBytes())
            assertEquals(want["new_sha256"]!!.string, result.sha256)
            // applying to the wrong base (the result itself, v2) is a typed delta error
            assertThrows<PackDeltaException> { Delta.apply(result, bytes(name)) }
            // a pack given as a delta, and the other way round
            assertThrows<PackMagicException> { Delta.read(bytes(want["base"]!!.string!!)) }
        }
    }

    @Test
    fun `every broken golden pack is rejected with its named error`() {
        val classes = mapOf(
            "PackTruncatedError" to PackTruncatedException::class.java,
            "PackMagicError" to PackMagicException::class.java,
            "PackVersionError" to PackVersionException::class.java,
            "PackChecksumError" to PackChecksumException::class.java,
            "PackFormatError" to PackFormatException::class.java,
        )
        val broken = expected["broken"]!!.obj
        assertEquals(11, broken.size) // 8 + 3 ivfpq index header/section errors
        for ((name, want) in broken) {
            val cls = classes.getValue(want["error"]!!.string!!)
            val e = assertThrows<PackException>(name) { PackReader.read(File(dir, name)) }
            assertEquals(cls, e.javaClass, "$name (${want["how"]!!.string}): ${e.message}")
            assertTrue(e.message!!.isNotBlank())
        }
    }

    @Test
    fun `fingerprint, dim, query and io problems are typed errors`(@TempDir tmp: File) {
        val raw = bytes("int8.pack")
        val pack = PackReader.read(raw)
        assertEquals(2, PackReader.read(bytes("ivfpq.pack")).search(DoubleArray(8) { 1.0 }, 100).size) // only probed coins
        val fp = assertThrows<PackFingerprintException> { PackReader.read(raw, expectedFingerprint = "ffffffffffffffff") }
        assertTrue("0123456789abcdef" in fp.message!! && "ffffffffffffffff" in fp.message!!, fp.message)
        assertThrows<PackDimException> { PackReader.read(raw, expectedDim = 64) }
        assertThrows<PackDimException> { pack.search(DoubleArray(64) { 1.0 }) }
        assertThrows<PackQueryException> { pack.search(DoubleArray(8)) }
        assertThrows<PackQueryException> { pack.search(DoubleArray(8) { Double.NaN }) }
        assertThrows<PackQueryException> { pack.search(DoubleArray(8) { 1.0 }, -1) }
        assertEquals(emptyList<Hit>(), pack.search(DoubleArray(8) { 1.0 }, 0))
        assertEquals(6, pack.search(DoubleArray(8) { 1.0 }, 100).size)
        assertThrows<PackIOException> { PackReader.read(File(tmp, "missing.pack")) }
        assertThrows<PackIOException> { PackReader.read(tmp) }
        assertThrows<PackTruncatedException> { PackReader.read(byteArrayOf(0x43, 0x56)) }
        assertThrows<PackTruncatedException> { PackReader.read(ByteArray(0)) } // the empty prefix of CVPK
        assertThrows<PackMagicException> { PackReader.read("XY".toByteArray()) }
    }
}
