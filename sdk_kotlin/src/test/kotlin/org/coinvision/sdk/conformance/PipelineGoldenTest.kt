package org.coinvision.sdk.conformance

import org.coinvision.sdk.Recognizer
import org.coinvision.sdk.TestPaths
import org.coinvision.sdk.image.Components
import org.coinvision.sdk.image.ImageIoDecoder
import org.coinvision.sdk.image.ImageOps
import org.coinvision.sdk.pack.PackBytes
import org.coinvision.sdk.pack.PackReader
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import java.io.File
import java.util.Base64

/**
 * Beyond the kit's four photos: 42 sample photos through the whole Kotlin pipeline (javax.imageio decode, ONNX
 * Runtime) against the reference SDK's results in testdata/pipeline_golden.json (tools/gen_pipeline_golden.py),
 * and the touching-coin split and the convex hull fill on synthetic masks against `split_touching_coins` and
 * `convex_hull_fill` pixel for pixel.
 */
class PipelineGoldenTest {
    private val golden = TestPaths.json(File(TestPaths.kotlinGolden, "pipeline_golden.json"))

    private fun packBits(mask: BooleanArray): ByteArray {
        val out = ByteArray((mask.size + 7) / 8)
        for (i in mask.indices) if (mask[i]) out[i / 8] = (out[i / 8].toInt() or (1 shl (7 - i % 8))).toByte()
        return out
    }

    /** Each golden [key] case: [op] on its mask equals the reference's output pixel for pixel. */
    private fun assertMaskCases(key: String, minCases: Int, op: (BooleanArray, Int, Int) -> BooleanArray) {
        val cases = golden[key]!!.list
        assertTrue(cases.size >= minCases, "$key: ${cases.size} cases")
        for (case in cases) {
            val w = case["width"]!!.long!!.toInt(); val h = case["height"]!!.long!!.toInt()
            val mask = Npy.unpackBits(Base64.getDecoder().decode(case["mask"]!!.string), w * h)
            val want = Npy.unpackBits(Base64.getDecoder().decode(case["expected"]!!.string), w * h)
            val got = op(mask, w, h)
            val differ = (0 until w * h).count { got[it] != want[it] }
            println("$key '${case["name"]!!.string}': ${got.count { it }} px (reference ${case["expected_area"]!!.long}), $differ px differ")
            assertEquals(0, differ, "$key '${case["name"]!!.string}'")
        }
    }

    @Test
    fun `touching-coin split matches the reference on synthetic masks`() =
        assertMaskCases("split_touching", 5, Components::splitTouchingCoins)

    @Test
    fun `convex hull fill matches the reference on masks with notches, holes, stray pixels and lines`() =
        assertMaskCases("convex_hull", 8, ImageOps::convexHullFill)

    @Test
    fun `sample photos - segmentation, crop and top-k agree with the reference`() {
        val rec = Recognizer.fromDir(TestPaths.models)
        rec.loadPack(PackReader.read(File(TestPaths.conformance, "pack/golden.pack")))
        val decoder = ImageIoDecoder()
        var maskExact = 0; var foundN = 0; var cropExact = 0; var top1 = 0; var topKSame = 0; var maxScoreDiff = 0.0
        val photos = golden["photos"]!!.list
        val started = System.nanoTime()
        rec.use {
            for (p in photos) {
                val file = p["file"]!!.string!!
                val r = rec.recognize(decoder.decode(File(TestPaths.root, file).readBytes()), 5)
                val seg = r.segmentation
                assertEquals(p["found"].toString().contains("true"), seg.found, "$file found")
                assertEquals(p["passes"]!!.long!!.toInt(), seg.passes, "$file passes")
                assertEquals(p["tiled"].toString().contains("true"), seg.tiled, "$file tiled")
                if (seg.found) {
                    foundN++
                    val want = p["bbox"]!!.list.map { it.long!!.toInt() }
                    assertTrue(want.indices.all { Math.abs(want[it] - seg.bbox!![it]) <= 1 }, "$file bbox ${seg.bbox!!.toList()} vs $want")
                    if (PackBytes.hex(PackBytes.sha256(packBits(seg.mask!!))) == p["mask_sha256"]!!.string) maskExact++
                    else println("$file: mask area ${seg.mask.count { it }} vs ${p["mask_area"]!!.long}")
                }
                if (PackBytes.hex(PackBytes.sha256(r.sides[0].crop.data)) == p["crop_sha256"]!!.string) cropExact++
                val wantK = p["top_k"]!!.list
                assertEquals(wantK[0][0].string, r.matches[0].coinId, "$file top-1")
                top1++
                if (wantK.map { it[0].string } == r.matches.map { it.coinId }) topKSame++
                wantK.indices.forEach { maxScoreDiff = maxOf(maxScoreDiff, Math.abs(wantK[it][1].double - r.matches[it].score)) }
                assertEquals(p["unknown"].toString().contains("true"), r.unknown, "$file unknown")
            }
        }
        val msPerPhoto = (System.nanoTime() - started) / 1e6 / photos.size
        println("pipeline golden: ${photos.size} photos (%.0f ms per photo, decode to top-5, ONNX Runtime 1 thread),".format(msPerPhoto) +
            " masks identical $maskExact of $foundN found, crops identical $cropExact, top-1 agree $top1, " +
            "top-5 identical $topKSame, max |score diff| $maxScoreDiff")
        assertTrue(topKSame >= photos.size - 1, "top-5 lists identical on $topKSame of ${photos.size}")
        assertTrue(maxScoreDiff <= 2e-3, "max score diff $maxScoreDiff")
    }
}
