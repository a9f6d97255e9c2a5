package org.coinvision.sdk.conformance

import org.coinvision.sdk.Json
import org.coinvision.sdk.JsonObject
import org.coinvision.sdk.JsonValue
import org.coinvision.sdk.Recognizer
import org.coinvision.sdk.TestPaths
import org.coinvision.sdk.image.ImageIoDecoder
import org.coinvision.sdk.image.ImageOps
import org.coinvision.sdk.image.RgbImage
import org.coinvision.sdk.pack.PackBytes
import org.coinvision.sdk.pack.PackReader
import org.coinvision.sdk.sync.SyncClient
import org.junit.jupiter.api.AfterAll
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.TestInstance
import java.io.File
import java.nio.file.Files
import java.time.Instant

/**
 * The conformance kit (`../conformance`, README there) on the ONNX release models: every stage against the ONNX
 * goldens within `kit.json`'s tolerances, each stage started from the golden input of that stage where the kit has
 * one (so a JPEG decoder difference cannot hide a pipeline bug), plus the whole pipeline from the JPEG bytes through
 * javax.imageio. The figures are printed and written to `target/conformance-figures.txt`.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class ConformanceKitTest {
    private val kitDir = TestPaths.conformance
    private val kit = TestPaths.json(File(kitDir, "kit.json"))
    private val tol = kit["tolerances"]!!
    private val recognizer = Recognizer.fromDir(TestPaths.models)
    private val pack = PackReader.read(File(kitDir, kit["pack"]!!["file"]!!.string!!))
    private val photos = kit["photos"]!!.list
    private val figures = StringBuilder()

    /** JPEG decoding (javax.imageio vs Pillow's libjpeg-turbo): the largest per-pixel difference this test accepts. */
    private val decodeMaxAbsLevels = 3 // measured: 0 on the four kit photos (baseline JPEGs); other encoders may differ

    init {
        recognizer.loadPack(pack)
    }

    private fun fig(photo: String, stage: String, value: Double, limit: String) {
        val line = "%-26s %-30s %12.6g   %s".format(photo, stage, value, limit)
        figures.appendLine(line)
        println(line)
    }

    private fun png(file: File): RgbImage = ImageIoDecoder().decode(file.readBytes())

    private fun u8(npy: Npy): RgbImage = RgbImage(npy.shape[1], npy.shape[0], npy.data)

    private fun expected(id: String): JsonValue = TestPaths.json(File(kitDir, "golden/$id/expected.json"))

    @AfterAll
    fun writeFigures() {
        File(TestPaths.root, "sdk_kotlin/target").mkdirs()
        File(TestPaths.root, "sdk_kotlin/target/conformance-figures.txt").writeText(figures.toString())
        recognizer.close()
    }

    @Test
    fun `decode - javax imageio against the reference pixels`() {
        for (p in photos) {
            val id = p["id"]!!.string!!
            val want = expected(id)["decode"]!!
            val golden = png(File(TestPaths.kotlinGolden, "decoded/$id.png"))
            // the PNG copy is the reference decode, byte for byte
            assertEquals(want["sha256"]!!.string, PackBytes.hex(PackBytes.sha256(golden.data)), "$id golden PNG")
            val mine = ImageIoDecoder().decode(File(kitDir, p["file"]!!.string!!).readBytes())
            assertEquals(want["shape"]!!.list.map { it.long!!.toInt() }, listOf(mine.height, mine.width, 3), "$id shape")
            var maxAbs = 0; var sum = 0L
            for (i in mine.data.indices) {
                val d = Math.abs((mine.data[i].toInt() and 0xff) - (golden.data[i].toInt() and 0xff))
                maxAbs = maxOf(maxAbs, d); sum += d
            }
            fig(id, "decode max|diff| (levels)", maxAbs.toDouble(), "<= $decodeMaxAbsLevels")
            fig(id, "decode mean|diff| (levels)", sum.toDouble() / mine.data.size, "(report)")
            assertTrue(maxAbs <= decodeMaxAbsLevels, "$id: decoded pixels differ by $maxAbs levels")
        }
    }

    @Test
    fun `letterbox, mask logits, segmentation, crop and embedding per stage`() {
        for (p in photos) {
            val id = p["id"]!!.string!!
            val exp = expected(id)
            val onnx = exp["onnx"]!!
            val dir = File(kitDir, "golden/$id")
            val rgb = png(File(TestPaths.kotlinGolden, "decoded/$id.png"))
            // 1. letterbox: parameters exact, pixels within 1 level
            val seg = recognizer.segmenter
            val (square, box) = ImageOps.letterbox(rgb, seg.sizePx, seg.padValue)
            val lb = exp["letterbox"]!!
            assertEquals(lb["scale"]!!.double, box.scale, 0.0)
            assertEquals(listOf(lb["pad_x"]!!.long, lb["pad_y"]!!.long, lb["src_h"]!!.long, lb["src_w"]!!.long),
                listOf(box.padX.toLong(), box.padY.toLong(), box.srcH.toLong(), box.srcW.toLong()), id)
            val goldenSquare = Npy.read(File(dir, "letterbox.npy"))
            val lbDiff = square.data.indices.maxOf { Math.abs((square.data[it].toInt() and 0xff) - (goldenSquare.data[it].toInt() and 0xff)) }
            fig(id, "letterbox max|diff| (levels)", lbDiff.toDouble(), "<= ${tol["letterbox_max_abs_levels"]!!.double}")
            assertTrue(lbDiff <= tol["letterbox_max_abs_levels"]!!.double)
            // 2. mask logits from the golden square
            val logits = seg.logits(u8(goldenSquare))
            val goldenLogits = Npy.read(File(dir, "onnx/mask_logits.npy")).floats()
            val logitDiff = logits.indices.maxOf { Math.abs(logits[it] - goldenLogits[it]).toDouble() }
            fig(id, "onnx logits max|diff|", logitDiff, "<= ${tol["onnx_logits_max_abs"]!!.double}")
            assertTrue(logitDiff <= tol["onnx_logits_max_abs"]!!.double)
            // 3. segmentation from the reference pixels
            val s = seg.segment(rgb)
            val ws = onnx["segmentation"]!!
            assertEquals(ws["found"]!!.toString().contains("true"), s.found, "$id found")
            assertEquals(ws["passes"]!!.long!!.toInt(), s.passes, "$id passes")
            assertEquals(ws["tiled"]!!.toString().contains("true"), s.tiled, "$id tiled")
            if (s.found) {
                val wantBox = ws["bbox"]!!.list.map { it.long!!.toInt() }
                val boxDiff = wantBox.indices.maxOf { Math.abs(wantBox[it] - s.bbox!![it]) }
                fig(id, "bbox max|diff| (px)", boxDiff.toDouble(), "<= ${tol["bbox_max_abs_px"]!!.double}")
                assertTrue(boxDiff <= tol["bbox_max_abs_px"]!!.double)
                val n = rgb.width * rgb.height
                val goldenMask = Npy.unpackBits(Npy.read(File(dir, "onnx/mask.npy")).data, n)
                var inter = 0; var union = 0
                for (i in 0 until n) { if (goldenMask[i] && s.mask!![i]) inter++; if (goldenMask[i] || s.mask!![i]) union++ }
                val iou = inter.toDouble() / union
                fig(id, "mask IoU", iou, ">= ${tol["mask_min_iou"]!!.double}")
                fig(id, "mask area diff (px)", (s.mask!!.count { it } - ws["mask_area"]!!.long!!).toDouble(), "(report)")
                fig(id, "first-pass area diff (px)", (s.firstPassMask!!.count { it } - ws["first_pass_area"]!!.long!!).toDouble(), "(report)")
                assertTrue(iou >= tol["mask_min_iou"]!!.double)
                // 4. crop: from the golden mask exactly, from ours within the mean tolerance
                val spec = recognizer.embedderMeta.input
                val goldenCrop = Npy.read(File(dir, "onnx/crop.npy"))
                val fromGolden = ImageOps.coinCrop(rgb, goldenMask, spec.sizePx, recognizer.cropMarginFrac, spec.padValue, spec.interpolation, recognizer.cropMask)
                assertEquals(onnx["crop_sha256"]!!.string, PackBytes.hex(PackBytes.sha256(fromGolden.data)), "$id crop from the golden mask")
                val ours = ImageOps.coinCrop(rgb, s.mask, spec.sizePx, recognizer.cropMarginFrac, spec.padValue, spec.interpolation, recognizer.cropMask)
                val cropMean = ours.data.indices.sumOf { Math.abs((ours.data[it].toInt() and 0xff) - (goldenCrop.data[it].toInt() and 0xff)).toLong() }.toDouble() / ours.data.size
                fig(id, "crop mean|diff| (levels)", cropMean, "<= ${tol["crop_mean_abs_levels"]!!.double}")
                assertTrue(cropMean <= tol["crop_mean_abs_levels"]!!.double)
            }
            // 5. embedding from the golden crop
            val goldenCrop = Npy.read(File(dir, "onnx/crop.npy"))
            val v = recognizer.embedCrop(u8(goldenCrop))
            val g = Npy.read(File(dir, "onnx/embedding.npy")).floats()
            val cos = v.indices.sumOf { v[it].toDouble() * g[it] }
            fig(id, "embedding cosine", cos, ">= ${tol["embedding_min_cosine"]!!.double}")
            assertTrue(cos >= tol["embedding_min_cosine"]!!.double)
        }
    }

    private fun checkTopK(id: String, from: String, image: RgbImage) {
        val onnx = expected(id)["onnx"]!!
        val r = recognizer.recognize(image, kit["top_k"]!!.long!!.toInt())
        val want = onnx["top_k"]!!.list
        assertEquals(want.map { it["coin_id"]!!.string }, r.matches.map { it.coinId }, "$id ($from) top-k ids")
        val scoreDiff = want.indices.maxOf { Math.abs(want[it]["score"]!!.double - r.matches[it].score) }
        fig(id, "top-k score max|diff| ($from)", scoreDiff, "<= ${tol["score_max_abs"]!!.double}")
        assertTrue(scoreDiff <= tol["score_max_abs"]!!.double)
        assertEquals(onnx["unknown"]!!.toString().contains("true"), r.unknown, "$id unknown")
        assertEquals(onnx["unknown_threshold"]!!.double, r.threshold, 1e-12)
    }

    @Test
    fun `top-k on the golden pack - from the reference pixels and from the JPEG bytes`() {
        for (p in photos) {
            val id = p["id"]!!.string!!
            checkTopK(id, "ref pixels", png(File(TestPaths.kotlinGolden, "decoded/$id.png")))
            checkTopK(id, "imageio", ImageIoDecoder().decode(File(kitDir, p["file"]!!.string!!).readBytes()))
        }
    }

    @Test
    fun `golden pack and signed manifest`() {
        val pk = kit["pack"]!!
        assertEquals(pk["sha256"]!!.string, pack.sha256)
        assertEquals(pk["coins"]!!.long!!.toInt(), pack.coinCount)
        assertEquals(pk["vectors"]!!.long!!.toInt(), pack.vectorCount)
        val m = kit["manifest"]!!
        val doc = TestPaths.json(File(kitDir, m["file"]!!.string!!))
        val key = File(kitDir, m["public_key_file"]!!.string!!).readText().trim()
        val at = Instant.parse(m["verify_at"]!!.string!!)
        val payload = doc["payload"] as JsonObject
        val client = SyncClient("http://127.0.0.1:9", payload["catalog_id"]!!.string!!, Files.createTempDirectory("cv-kit").toFile(), key)
        val verified = client.verifyManifest(doc, at)
        assertEquals(pack.sha256, verified["pack"]!!["sha256"]!!.string)
        assertEquals(pack.modelFingerprint, verified["model_fingerprint"]!!.string)
        // one changed byte of the payload and the signature no longer verifies
        val forged = JsonObject(doc.obj + ("payload" to JsonObject(payload.map + ("version" to Json.parse("99")))))
        org.junit.jupiter.api.assertThrows<org.coinvision.sdk.SyncException> { client.verifyManifest(forged, at) }
    }
}
