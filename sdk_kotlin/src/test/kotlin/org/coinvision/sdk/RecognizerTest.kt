package org.coinvision.sdk

import org.coinvision.sdk.image.ImageOps
import org.coinvision.sdk.image.RgbImage
import org.coinvision.sdk.model.ModelMetadata
import org.coinvision.sdk.model.OnnxModelRuntime
import org.coinvision.sdk.pack.PackReader
import org.junit.jupiter.api.AfterAll
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.TestInstance
import org.junit.jupiter.api.assertThrows
import org.junit.jupiter.api.io.TempDir
import java.io.File

/** recognizePair, the unknown verdict and the typed errors of the Recognizer, on the release ONNX models. */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class RecognizerTest {
    private val rec = Recognizer.fromDir(TestPaths.models)
    private val pack = PackReader.read(File(TestPaths.conformance, "pack/golden.pack"))
    private fun photo(cls: String, i: Int) =
        File(TestPaths.samples, "euro_phone/images/$cls").listFiles()!!.sorted()[i].readBytes()

    @AfterAll
    fun close() = rec.close()

    @Test
    fun `parameters come from the model metadata`() {
        assertEquals(128, rec.segmenter.sizePx)
        assertFalse(rec.segmenter.splitTouching) // picked off with the views (bench_seg_views)
        assertEquals(2, rec.segmenter.views) // the second pass averages 2 turns of its crop (spec 2.7)
        assertEquals(0.8, rec.segmenter.singlePassBoxFrac) // segmenter v3: one pass for a coin that fills the photo
        assertEquals(0.4, rec.segmenter.tileFrac) // tiles when the whole photo shows no coin (spec 2.3)
        assertEquals(0.15, rec.segmenter.marginFrac)
        val meta = TestPaths.embedderMeta
        assertEquals(meta["extra"]!!["embed_rotations"]!!.double.toInt(), rec.embedRotations)
        assertEquals("convex_hull", rec.cropMask) // the crop keeps the mask's convex hull (spec 3; bench_scene_recognition)
        assertEquals(meta["threshold"]!!.double, rec.unknownThreshold)
        assertEquals(meta["fingerprint"]!!.string, rec.fingerprint)
        assertEquals(meta["embedding_dim"]!!.double.toInt(), rec.dim)
        assertEquals(192, rec.dim) // the release: two 64-d trained embedders + 64-d frozen Lite0 branch
        assertEquals(0.3, Recognizer(OnnxModelRuntime(File(TestPaths.models, "segmenter.onnx")),
            OnnxModelRuntime(File(TestPaths.models, "embedder.onnx")), unknownThreshold = 0.3).unknownThreshold)
    }

    @Test
    fun `recognizePair fuses both photos per coin by the mean of their scores`() {
        rec.loadPack(pack)
        val a = photo("2e", 1); val b = photo("2e", 3)
        val pair = rec.recognizePair(a, b, 3)
        assertEquals("2e", pair.best!!.coinId)
        assertFalse(pair.unknown)
        val sa = rec.recognize(a, pack.coinCount).matches.associate { it.coinId to it.score }
        val sb = rec.recognize(b, pack.coinCount).matches.associate { it.coinId to it.score }
        for (m in pair.matches) assertEquals((sa.getValue(m.coinId) + sb.getValue(m.coinId)) / 2, m.score, 1e-9)
        assertEquals(2, pair.sides.size)
        assertTrue("obverse.embed" in pair.timingsMs && "reverse.segment" in pair.timingsMs)
        // a coin of another catalog is "unknown" at the calibrated threshold
        val other = File(TestPaths.conformance, "photos/107_05c5b8feba90.jpg").readBytes()
        assertTrue(rec.recognize(other).unknown)
    }

    @Test
    fun `fusePairScores groups sides by coin_group and penalises a missing side`() {
        val fused = fusePairScores(listOf("a-obv" to 0.9, "b" to 0.5), listOf("a-rev" to 0.8, "b" to 0.7)) { if (it.startsWith("a-")) "a" else it }
        assertEquals(listOf("a", "b"), fused.map { it.first })
        assertEquals(0.85, fused[0].second, 1e-12)
        assertEquals("a-obv", fused[0].third)
        val missing = fusePairScores(listOf("x" to 0.9, "y" to 0.2), listOf("y" to 0.6)) { it }
        assertEquals(listOf("x" to (0.9 + 0.6) / 2, "y" to 0.4), missing.map { it.first to it.second })
    }

    @Test
    fun `tiles - an n x n grid of squares of ceil(f x L) over the centred frame, corner to corner, row by row`() {
        assertEquals(listOf(listOf(0, -40, 192, 152), listOf(128, -40, 320, 152), listOf(0, 88, 192, 280), listOf(128, 88, 320, 280)),
            rec.segmenter.tileBoxes(320, 240, 0.6).map { it.toList() })
        assertEquals(listOf(listOf(-51, 0, 130, 181), listOf(69, 0, 250, 181), listOf(-51, 120, 130, 301), listOf(69, 120, 250, 301)),
            rec.segmenter.tileBoxes(199, 301, 0.6).map { it.toList() })
        assertEquals(listOf(listOf(-51, 0, 70, 121), listOf(39, 0, 160, 121), listOf(129, 0, 250, 121), listOf(-51, 90, 70, 211),
            listOf(39, 90, 160, 211), listOf(129, 90, 250, 211), listOf(-51, 180, 70, 301), listOf(39, 180, 160, 301), listOf(129, 180, 250, 301)),
            rec.segmenter.tileBoxes(199, 301, 0.4).map { it.toList() })
        assertEquals(listOf(0, 105, 211, 0, 105, 211, 0, 105, 211), rec.segmenter.tileBoxes(320, 240, 0.34).map { it[0] }) // floor offsets
    }

    @Test
    fun `views - view k is the input turned k quarter turns counter-clockwise, out(y, x) = in(x, S - 1 - y)`() {
        assertEquals(listOf(2, 5, 8, 1, 4, 7, 0, 3, 6), ImageOps.quarterTurnSource(3, 1).toList())
        assertEquals(listOf(6, 3, 0, 7, 4, 1, 8, 5, 2), ImageOps.quarterTurnSource(3, -1).toList()) // clockwise: back
        val square = RgbImage(5, 5, ByteArray(75) { ((it * 37) % 251).toByte() })
        assertEquals(square.data.toList(), ImageOps.turnSquare(ImageOps.turnSquare(square, 1), 3).data.toList())
        val turned = ImageOps.turnSquare(square, 1)
        for (y in 0 until 5) for (x in 0 until 5) for (c in 0 until 3) assertEquals(square[4 - y, x, c], turned[x, y, c])
        val map = FloatArray(25) { it.toFloat() }
        assertEquals(map.toList(), ImageOps.turnMap(ImageOps.turnMap(map, 5, 2), 5, -2).toList())
    }

    /** The message of the [ConfigException] a segmenter whose sidecar metadata is edited by [edit] is refused with. */
    private fun refusal(tmp: File, edit: (String) -> String): String {
        File(TestPaths.models, "segmenter.onnx").copyTo(File(tmp, "segmenter.onnx"))
        val meta = File(TestPaths.models, "segmenter.onnx.meta.json").readText()
        File(tmp, "segmenter.onnx.meta.json").writeText(edit(meta))
        return OnnxModelRuntime(File(tmp, "segmenter.onnx")).use { runtime -> assertThrows<ConfigException> { Segmenter(runtime) }.message!! }
    }

    @Test
    fun `views other than 1, 2 or 4 are refused with the value and the fix`(@TempDir tmp: File) {
        val message = refusal(tmp) { it.replace(Regex("\"views\": [0-9.]+"), "\"views\": 3") }
        assertTrue("views=3" in message && "[1, 2, 4]" in message, message)
    }

    @Test
    fun `a tile_frac outside 0,25 to 1 is refused with the value and the fix`(@TempDir tmp: File) {
        val message = refusal(tmp) { it.replace(Regex("\"tile_frac\": [0-9.]+"), "\"tile_frac\": 0.2") }
        assertTrue("tile_frac=0.2" in message && "[0.25, 1)" in message, message)
    }

    @Test
    fun `typed errors - no pack, other model's pack, bad arguments, bad image, bad metadata`(@TempDir tmp: File) {
        val fresh = Recognizer.fromDir(TestPaths.models)
        fresh.use {
            assertThrows<PackException> { it.recognize(photo("2e", 0)) }
            val other = PackReader.read(File(TestPaths.goldenPacks, "int8.pack"))
            val e = assertThrows<PackFingerprintException> { it.loadPack(other) }
            assertTrue("0123456789abcdef" in e.message!! && rec.fingerprint in e.message!!)
            it.loadPack(pack)
            assertThrows<ConfigException> { it.recognize(photo("2e", 0), 0) }
            assertThrows<ImageException> { it.recognize(ByteArray(0)) }
            assertThrows<ImageException> { it.recognize("not a photo".toByteArray()) }
            assertThrows<ImageException> { it.recognize(photo("2e", 0).copyOfRange(0, 200)) }
        }
        assertThrows<ModelLoadException> { OnnxModelRuntime(File(tmp, "segmenter.onnx")) }
        assertThrows<ModelLoadException> { ModelMetadata.parse("{\"name\": 1}") }
        assertThrows<ModelLoadException> { ModelMetadata.parse("not json") }
        File(tmp, "bad.onnx").writeText("not a model")
        File(tmp, "bad.onnx.meta.json").writeText(File(TestPaths.models, "embedder.onnx.meta.json").readText())
        assertThrows<ModelLoadException> { OnnxModelRuntime(File(tmp, "bad.onnx")) }
    }
}
