package org.coinvision.sdk.pack

import org.coinvision.sdk.PackException
import org.coinvision.sdk.TestPaths
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Assertions.fail
import org.junit.jupiter.api.Test
import java.io.File
import java.security.MessageDigest
import kotlin.random.Random

/**
 * Seeded mutation fuzzing of the reader and the delta applier (like `python -m benchmarks.fuzz_pack`):
 * every mutated file is either rejected with a [PackException] subclass or, if it still parses, canonical
 * (re-serialises to the same bytes). Never another exception, never a crash.
 */
class MutatedPackTest {
    private val dir = TestPaths.goldenPacks

    private fun reseal(b: ByteArray): ByteArray {
        if (b.size < 32) return b
        val body = b.copyOfRange(0, b.size - 32)
        return body + MessageDigest.getInstance("SHA-256").digest(body)
    }

    private fun mutations(src: ByteArray, rnd: Random): List<ByteArray> {
        val out = ArrayList<ByteArray>()
        for (i in 0 until 300) {
            val b = src.copyOf()
            when (i % 6) {
                0 -> b[rnd.nextInt(b.size)] = rnd.nextInt(256).toByte() // a random byte, checksum left stale
                1 -> { b[rnd.nextInt(b.size - 32)] = rnd.nextInt(256).toByte(); out.add(reseal(b)); continue }
                2 -> { // a header field set to an extreme value, resealed
                    val pos = 4 + rnd.nextInt(60)
                    b[pos] = if (rnd.nextBoolean()) 0xff.toByte() else 0
                    out.add(reseal(b)); continue
                }
                3 -> { out.add(b.copyOfRange(0, rnd.nextInt(b.size))); continue } // truncated
                4 -> { out.add(reseal(b + ByteArray(1 + rnd.nextInt(64)))); continue } // trailing bytes
                5 -> { // a table byte changed (UTF-8, lengths, sort order), resealed
                    val pos = b.size - 32 - 1 - rnd.nextInt(minOf(200, b.size - 96))
                    b[pos] = (b[pos] + 1 + rnd.nextInt(254)).toByte()
                    out.add(reseal(b)); continue
                }
            }
            out.add(b)
        }
        return out
    }

    @Test
    fun `mutated packs are rejected with typed errors or stay canonical`() {
        val rnd = Random(17)
        // Of 300 mutations, at least this many must be refused. Resealed changes of vector codes or label text still
        // make valid packs; ivfpq.pack is mostly codebooks (8 KiB of floats of its 8.6 KiB), where a resealed byte
        // change is usually a valid, canonical pack too.
        val minRejected = mapOf("int8.pack" to 225, "fp16.pack" to 225, "fp32.pack" to 225, "int8_v2.pack" to 225,
            "ivfpq.pack" to 200)
        for ((name, min) in minRejected) {
            val src = File(dir, name).readBytes()
            var rejected = 0
            for (m in mutations(src, rnd)) {
                try {
                    val p = PackReader.read(m)
                    assertArrayEquals(m, p.toBytes(), "a mutated $name parsed but is not canonical")
                    assertArrayEquals(m, p.serialize(), "a mutated $name parsed but its fields serialise to other bytes")
                    p.search(DoubleArray(p.dim) { 1.0 }, 3)
                    p.coinScores(DoubleArray(p.dim) { it - 3.5 })
                } catch (e: PackException) {
                    rejected++
                    assertTrue(!e.message.isNullOrBlank())
                } catch (e: Throwable) {
                    fail("mutated $name: ${e.javaClass.name} is not a PackException: ${e.message}", e)
                }
            }
            assertTrue(rejected >= min, "$name: $rejected of 300 mutations rejected, expected at least $min")
        }
    }

    @Test
    fun `mutated ivfpq index fields are rejected with typed errors or stay canonical and searchable`() {
        // The random positions above mostly land in ivfpq.pack's codebooks; these land in the index header, list
        // offsets, centroids and the coin index / codes (everything but the codebooks), resealed so that the
        // checks after the checksum are reached.
        val rnd = Random(4)
        val src = File(dir, "ivfpq.pack").readBytes()
        val codebooksAt = 64 + 16 + 4 * 3 + 4 * 2 * 8
        val afterCodebooks = codebooksAt + 4 * 256 * 8
        var rejected = 0
        for (t in 0 until 600) {
            val b = src.copyOf()
            val pos = if (t % 2 == 0) 64 + rnd.nextInt(codebooksAt - 64) else afterCodebooks + rnd.nextInt(8 * 8)
            b[pos] = when (rnd.nextInt(4)) {
                0 -> 0
                1 -> 0xff.toByte()
                2 -> (b[pos].toInt() xor (1 shl rnd.nextInt(8))).toByte()
                else -> rnd.nextInt(256).toByte()
            }
            val m = reseal(b)
            try {
                val p = PackReader.read(m)
                assertArrayEquals(m, p.serialize(), "a mutated ivfpq.pack (byte $pos) parsed but is not canonical")
                for (q in listOf(DoubleArray(8) { 1.0 }, DoubleArray(8) { it - 3.5 })) {
                    val hits = p.search(q, 3)
                    assertTrue(hits.size <= 3 && hits.all { p.record(it.coinId) != null })
                }
            } catch (e: PackException) {
                rejected++
                assertTrue(!e.message.isNullOrBlank())
            } catch (e: Throwable) {
                fail("mutated ivfpq.pack (byte $pos): ${e.javaClass.name} is not a PackException: ${e.message}", e)
            }
        }
        // header, offset and coin index changes are nearly all refused; centroid float changes mostly read
        assertTrue(rejected in 150..550, "$rejected of 600 refused")
    }

    @Test
    fun `mutated deltas are refused with typed errors and the base pack stays as it was`() {
        val rnd = Random(71)
        val baseBytes = File(dir, "int8.pack").readBytes()
        val base = PackReader.read(baseBytes)
        val v2 = File(dir, "int8_v2.pack").readBytes()
        val src = File(dir, "int8_v1_to_v2.delta").readBytes()
        for (m in mutations(src, rnd)) {
            try {
                val p = Delta.apply(base, m)
                assertArrayEquals(v2, p.toBytes(), "a mutated delta applied to something other than v2")
            } catch (e: PackException) {
                assertTrue(!e.message.isNullOrBlank())
            } catch (e: Throwable) {
                fail("mutated delta: ${e.javaClass.name} is not a PackException: ${e.message}", e)
            }
            assertArrayEquals(baseBytes, base.toBytes())
        }
    }
}
