package org.coinvision.sdk.image

import kotlin.math.ceil
import kotlin.math.floor
import kotlin.math.min

/** An `H×W×3` uint8 RGB image, row-major, channels interleaved (what `numpy` holds in the reference SDK). */
class RgbImage(val width: Int, val height: Int, val data: ByteArray = ByteArray(width * height * 3)) {
    init {
        require(width > 0 && height > 0 && data.size == width * height * 3) { "RgbImage $width x $height with ${data.size} bytes" }
    }

    operator fun get(x: Int, y: Int, c: Int): Int = data[(y * width + x) * 3 + c].toInt() and 0xff
}

/** Where the resized image sits inside the square model input (Python `preprocess.Letterbox`). */
data class Letterbox(val scale: Double, val padX: Int, val padY: Int, val srcH: Int, val srcW: Int)

/**
 * The image operations of docs/PIPELINE_SPEC.md, written to match OpenCV's definitions as the Python reference
 * SDK calls them (`cv2.resize` INTER_LINEAR / INTER_AREA, connected components, the 5×5 chamfer distance
 * transform, dilation, contours), with no OpenCV on the JVM. uint8 bilinear resizing reproduces OpenCV's fixed-point
 * arithmetic bit for bit (11-bit coefficients, the vectorised rounding of its x86 build).
 */
object ImageOps {
    private const val COEF_BITS = 11
    private const val COEF_SCALE = 1 shl COEF_BITS

    /** Python's `round()` (half to even) of a double, as Int. */
    fun roundHalfEven(x: Double): Int = Math.rint(x).toInt()

    private class Coefs(val ofs: IntArray, val a0: FloatArray, val a1: FloatArray, val xmax: Int)

    /** OpenCV's resize coefficient table for INTER_LINEAR along one axis (x clamps at both ends, y does not). */
    private fun linearCoefs(src: Int, dst: Int, isX: Boolean): Coefs {
        val inv = dst.toDouble() / src
        val scale = 1.0 / inv
        val ofs = IntArray(dst)
        val a0 = FloatArray(dst)
        val a1 = FloatArray(dst)
        var xmax = dst
        for (d in 0 until dst) {
            var f = ((d + 0.5) * scale - 0.5).toFloat()
            var s = floor(f).toInt()
            f -= s.toFloat()
            if (isX) {
                if (s < 0) { f = 0f; s = 0 }
                if (s + 1 >= src) {
                    xmax = min(xmax, d)
                    if (s >= src - 1) { f = 0f; s = src - 1 }
                }
            }
            ofs[d] = s
            a0[d] = 1f - f
            a1[d] = f
        }
        return Coefs(ofs, a0, a1, xmax)
    }

    private fun fix(c: Float): Int = Math.rint((c * COEF_SCALE.toFloat()).toDouble()).toInt()

    /** `cv2.resize(img, (dw, dh), interpolation=INTER_LINEAR)` of an interleaved uint8 image with [cn] channels. */
    fun resizeLinearU8(src: ByteArray, sw: Int, sh: Int, cn: Int, dw: Int, dh: Int): ByteArray {
        if (sw == dw && sh == dh) return src.copyOf()
        if (sw == 2 * dw && sh == 2 * dh) return resizeAreaU8(src, sw, sh, cn, dw, dh) // OpenCV's own shortcut
        val cx = linearCoefs(sw, dw, true)
        val cy = linearCoefs(sh, dh, false)
        val ax0 = IntArray(dw) { fix(cx.a0[it]) }
        val ax1 = IntArray(dw) { fix(cx.a1[it]) }
        // horizontal pass of every source row, as OpenCV's HResizeLinear (int sums, coefficients sum to 2048)
        val rowLen = dw * cn
        val h = IntArray(sh * rowLen)
        for (y in 0 until sh) {
            val base = y * sw * cn
            val out = y * rowLen
            for (dx in 0 until dw) {
                val sx = cx.ofs[dx] * cn
                for (c in 0 until cn) {
                    val s0 = src[base + sx + c].toInt() and 0xff
                    h[out + dx * cn + c] = if (dx < cx.xmax) s0 * ax0[dx] + (src[base + sx + cn + c].toInt() and 0xff) * ax1[dx]
                    else s0 * COEF_SCALE
                }
            }
        }
        val dst = ByteArray(dh * rowLen)
        for (dy in 0 until dh) {
            val r0 = (cy.ofs[dy]).coerceIn(0, sh - 1) * rowLen
            val r1 = (cy.ofs[dy] + 1).coerceIn(0, sh - 1) * rowLen
            val b0 = fix(cy.a0[dy])
            val b1 = fix(cy.a1[dy])
            val o = dy * rowLen
            for (x in 0 until rowLen) {
                // OpenCV's vectorised VResizeLinear: ((S0>>4)*b0>>16) + ((S1>>4)*b1>>16), rounding shift by 2
                val v = ((((h[r0 + x] shr 4) * b0) shr 16) + (((h[r1 + x] shr 4) * b1) shr 16) + 2) shr 2
                dst[o + x] = v.coerceIn(0, 255).toByte()
            }
        }
        return dst
    }

    /** `cv2.resize` INTER_LINEAR of a single-channel float32 map. */
    fun resizeLinearF32(src: FloatArray, sw: Int, sh: Int, dw: Int, dh: Int): FloatArray {
        if (sw == dw && sh == dh) return src.copyOf()
        if (sw == 2 * dw && sh == 2 * dh) return resizeAreaF32(src, sw, sh, dw, dh)
        val cx = linearCoefs(sw, dw, true)
        val cy = linearCoefs(sh, dh, false)
        val h = FloatArray(sh * dw)
        for (y in 0 until sh) {
            val base = y * sw
            for (dx in 0 until dw) {
                val sx = cx.ofs[dx]
                h[y * dw + dx] = if (dx < cx.xmax) src[base + sx] * cx.a0[dx] + src[base + sx + 1] * cx.a1[dx] else src[base + sx]
            }
        }
        val dst = FloatArray(dh * dw)
        for (dy in 0 until dh) {
            val r0 = cy.ofs[dy].coerceIn(0, sh - 1) * dw
            val r1 = (cy.ofs[dy] + 1).coerceIn(0, sh - 1) * dw
            val b0 = cy.a0[dy]
            val b1 = cy.a1[dy]
            for (x in 0 until dw) dst[dy * dw + x] = h[r0 + x] * b0 + h[r1 + x] * b1
        }
        return dst
    }

    private class AreaTab(val di: IntArray, val si: IntArray, val alpha: FloatArray)

    /** OpenCV's `computeResizeAreaTab`. */
    private fun areaTab(src: Int, dst: Int, scale: Double): AreaTab {
        val di = ArrayList<Int>(); val si = ArrayList<Int>(); val al = ArrayList<Float>()
        for (d in 0 until dst) {
            val f1 = d * scale
            val f2 = f1 + scale
            val cell = min(scale, src - f1)
            var s1 = ceil(f1).toInt()
            var s2 = floor(f2).toInt()
            s2 = min(s2, src - 1)
            s1 = min(s1, s2)
            if (s1 - f1 > 1e-3) { di.add(d); si.add(s1 - 1); al.add(((s1 - f1) / cell).toFloat()) }
            for (s in s1 until s2) { di.add(d); si.add(s); al.add((1.0 / cell).toFloat()) }
            if (f2 - s2 > 1e-3) { di.add(d); si.add(s2); al.add((min(min(f2 - s2, 1.0), cell) / cell).toFloat()) }
        }
        return AreaTab(di.toIntArray(), si.toIntArray(), al.toFloatArray())
    }

    /** `cv2.resize` INTER_AREA (shrinking) of a float32 map with [cn] interleaved channels; integer factors average blocks. */
    fun resizeAreaF32(src: FloatArray, sw: Int, sh: Int, dw: Int, dh: Int, cn: Int = 1): FloatArray =
        resizeArea(sw, sh, cn, dw, dh, { src[it] }, { _ -> })

    /** `cv2.resize` INTER_AREA of an interleaved uint8 image (the crop shrink of embedders with "area"). */
    fun resizeAreaU8(src: ByteArray, sw: Int, sh: Int, cn: Int, dw: Int, dh: Int): ByteArray {
        val sx = sw.toDouble() / dw
        val sy = sh.toDouble() / dh
        if (sw == 2 * dw && sh == 2 * dh) { // OpenCV's vectorised 2x2 mean: (a + b + c + d + 2) >> 2
            val out = ByteArray(dw * dh * cn)
            for (y in 0 until dh) for (x in 0 until dw) for (c in 0 until cn) {
                fun p(xx: Int, yy: Int) = src[(yy * sw + xx) * cn + c].toInt() and 0xff
                val s = p(2 * x, 2 * y) + p(2 * x + 1, 2 * y) + p(2 * x, 2 * y + 1) + p(2 * x + 1, 2 * y + 1)
                out[(y * dw + x) * cn + c] = ((s + 2) shr 2).toByte()
            }
            return out
        }
        val isx = Math.rint(sx).toInt()
        val isy = Math.rint(sy).toInt()
        if (Math.abs(sx - isx) < 1e-7 && Math.abs(sy - isy) < 1e-7) { // integer factors: block sums * (1/area)
            val out = ByteArray(dw * dh * cn)
            val scale = 1f / (isx * isy)
            for (y in 0 until dh) for (x in 0 until dw) for (c in 0 until cn) {
                var s = 0
                for (yy in 0 until isy) for (xx in 0 until isx) s += src[((y * isy + yy) * sw + x * isx + xx) * cn + c].toInt() and 0xff
                out[(y * dw + x) * cn + c] = Math.rint((s * scale).toDouble()).toInt().coerceIn(0, 255).toByte()
            }
            return out
        }
        val f = resizeArea(sw, sh, cn, dw, dh, { src[it].toInt().and(0xff).toFloat() }, { _ -> })
        return ByteArray(f.size) { Math.rint(f[it].toDouble()).toInt().coerceIn(0, 255).toByte() }
    }

    private inline fun resizeArea(sw: Int, sh: Int, cn: Int, dw: Int, dh: Int, px: (Int) -> Float, @Suppress("UNUSED_PARAMETER") unused: (Int) -> Unit): FloatArray {
        val scaleX = 1.0 / (dw.toDouble() / sw)
        val scaleY = 1.0 / (dh.toDouble() / sh)
        val isx = Math.rint(scaleX).toInt()
        val isy = Math.rint(scaleY).toInt()
        val out = FloatArray(dw * dh * cn)
        if (Math.abs(scaleX - isx) < 1e-7 && Math.abs(scaleY - isy) < 1e-7) {
            val scale = 1f / (isx * isy)
            for (y in 0 until dh) for (x in 0 until dw) for (c in 0 until cn) {
                var s = 0f
                for (yy in 0 until isy) for (xx in 0 until isx) s += px(((y * isy + yy) * sw + x * isx + xx) * cn + c)
                out[(y * dw + x) * cn + c] = s * scale
            }
            return out
        }
        val xt = areaTab(sw, dw, scaleX)
        val yt = areaTab(sh, dh, scaleY)
        val buf = FloatArray(dw * cn)
        val sum = FloatArray(dw * cn)
        var prev = -1
        for (j in yt.di.indices) {
            val dy = yt.di[j]
            val beta = yt.alpha[j]
            java.util.Arrays.fill(buf, 0f)
            val rowBase = yt.si[j] * sw * cn
            for (k in xt.di.indices) {
                val dxn = xt.di[k] * cn
                val a = xt.alpha[k]
                val sxn = rowBase + xt.si[k] * cn
                for (c in 0 until cn) buf[dxn + c] += px(sxn + c) * a
            }
            if (dy != prev) {
                if (prev >= 0) System.arraycopy(sum, 0, out, prev * dw * cn, dw * cn)
                for (i in sum.indices) sum[i] = beta * buf[i]
                prev = dy
            } else {
                for (i in sum.indices) sum[i] += beta * buf[i]
            }
        }
        if (prev >= 0) System.arraycopy(sum, 0, out, prev * dw * cn, dw * cn)
        return out
    }

    /** Resize keeping aspect so the longer side is [size], pad to a centred square with [padValue]. */
    fun letterbox(image: RgbImage, size: Int, padValue: Int = 0): Pair<RgbImage, Letterbox> {
        val h = image.height
        val w = image.width
        val scale = size.toDouble() / maxOf(h, w)
        val nw = maxOf(1, roundHalfEven(w * scale))
        val nh = maxOf(1, roundHalfEven(h * scale))
        val resized = resizeLinearU8(image.data, w, h, 3, nw, nh)
        val px = (size - nw) / 2
        val py = (size - nh) / 2
        val out = ByteArray(size * size * 3) { padValue.toByte() }
        for (y in 0 until nh) System.arraycopy(resized, y * nw * 3, out, ((py + y) * size + px) * 3, nw * 3)
        return RgbImage(size, size, out) to Letterbox(scale, px, py, h, w)
    }

    /** Map a `size`-square probability map back onto the source image grid (bilinear). */
    fun unletterbox(prob: FloatArray, size: Int, box: Letterbox): FloatArray {
        val nw = maxOf(1, roundHalfEven(box.srcW * box.scale))
        val nh = maxOf(1, roundHalfEven(box.srcH * box.scale))
        val inner = FloatArray(nw * nh)
        for (y in 0 until nh) System.arraycopy(prob, (box.padY + y) * size + box.padX, inner, y * nw, nw)
        return resizeLinearF32(inner, nw, nh, box.srcW, box.srcH)
    }

    /** `x = (rgb / 255 − mean) / std` in float32, layout "NCHW" or "NHWC" (batch of one). */
    fun toModelInput(square: RgbImage, mean: FloatArray, std: FloatArray, layout: String): FloatArray {
        val s = square.width
        val n = s * square.height
        val out = FloatArray(n * 3)
        for (i in 0 until n) for (c in 0 until 3) {
            val v = ((square.data[i * 3 + c].toInt() and 0xff).toFloat() / 255f - mean[c]) / std[c]
            if (layout == "NCHW") out[c * n + i] = v else out[i * 3 + c] = v
        }
        return out
    }

    /** Sigmoid in float32, the reference's tanh form. */
    fun sigmoid(x: Float): Float = (0.5f * (1f + Math.tanh((0.5f * x).toDouble()).toFloat()))

    /** For each cell of a [size]-square grid turned [turns] quarter turns counter-clockwise, the row-major index of the
     * cell it comes from (spec 2.7: one turn is `out[y][x] = in[x][size - 1 - y]`, numpy's `rot90`). */
    fun quarterTurnSource(size: Int, turns: Int): IntArray = IntArray(size * size) { i ->
        var r = i / size; var c = i % size
        repeat(Math.floorMod(turns, 4)) { val nr = c; c = size - 1 - r; r = nr }
        r * size + c
    }

    /** A square image turned [turns] quarter turns counter-clockwise (spec 2.7). */
    fun turnSquare(image: RgbImage, turns: Int): RgbImage {
        require(image.width == image.height) { "turnSquare needs a square image, got ${image.width} x ${image.height}" }
        val source = quarterTurnSource(image.width, turns)
        val out = RgbImage(image.width, image.height)
        for (i in source.indices) System.arraycopy(image.data, source[i] * 3, out.data, i * 3, 3)
        return out
    }

    /** A [size]-square map turned [turns] quarter turns counter-clockwise (negative: clockwise). */
    fun turnMap(map: FloatArray, size: Int, turns: Int): FloatArray {
        val source = quarterTurnSource(size, turns)
        return FloatArray(map.size) { map[source[it]] }
    }

    /** The crop of [box] (x0, y0, x1 exclusive, y1 exclusive), which may leave the image: padded with [pad]. */
    fun cropPadded(image: RgbImage, box: IntArray, pad: Int): RgbImage {
        val (x0, y0, x1, y1) = box
        val out = RgbImage(x1 - x0, y1 - y0, ByteArray((x1 - x0) * (y1 - y0) * 3) { pad.toByte() })
        val sx0 = maxOf(x0, 0); val sy0 = maxOf(y0, 0); val sx1 = min(x1, image.width); val sy1 = min(y1, image.height)
        if (sx1 > sx0 && sy1 > sy0) {
            for (y in sy0 until sy1) {
                System.arraycopy(image.data, (y * image.width + sx0) * 3, out.data, ((y - y0) * out.width + (sx0 - x0)) * 3, (sx1 - sx0) * 3)
            }
        }
        return out
    }

    /** Square (x0, y0, x1, y1) (exclusive ends) around the mask, grown by [marginFrac] per side; may leave the image. */
    fun squareBbox(mask: BooleanArray, w: Int, h: Int, marginFrac: Double): IntArray {
        var x0 = Int.MAX_VALUE; var y0 = Int.MAX_VALUE; var x1 = -1; var y1 = -1
        for (y in 0 until h) for (x in 0 until w) if (mask[y * w + x]) {
            if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y
        }
        x1 += 1; y1 += 1
        val side = maxOf(x1 - x0, y1 - y0) * (1.0 + 2.0 * marginFrac)
        val cx = (x0 + x1) / 2.0
        val cy = (y0 + y1) / 2.0
        val half = side / 2.0
        return intArrayOf(roundHalfEven(cx - half), roundHalfEven(cy - half), roundHalfEven(cx + half), roundHalfEven(cy + half))
    }

    /** Resize a square image to [size]: "area" when shrinking with interpolation "area", bilinear otherwise. */
    fun resizeSquare(square: RgbImage, size: Int, interpolation: String): RgbImage {
        if (square.width == size && square.height == size) return square
        val shrinking = square.height > size
        val data = if (interpolation == "area" && shrinking) resizeAreaU8(square.data, square.width, square.height, 3, size, size)
        else resizeLinearU8(square.data, square.width, square.height, 3, size, size)
        return RgbImage(size, size, data)
    }

    /** Which pixels the crop keeps (embedder metadata `extra.crop_mask`): the mask's, or its convex hull's. */
    val CROP_MASKS = listOf("exact", "convex_hull")

    /**
     * `preprocess.convex_hull_fill` (spec step 3): the pixels whose centres lie inside or on the convex hull of the
     * mask's pixel centres, by integer arithmetic (Andrew's monotone chain over each row's two end pixels, then each
     * row's interval inside every hull edge). A hull without area (a point, a line of pixels): the mask as it is.
     */
    fun convexHullFill(mask: BooleanArray, w: Int, h: Int): BooleanArray {
        val ends = ArrayList<LongArray>()
        var y0 = -1; var y1 = -1
        for (y in 0 until h) {
            var left = -1; var right = -1
            for (x in 0 until w) if (mask[y * w + x]) { if (left < 0) left = x; right = x }
            if (left < 0) continue
            if (y0 < 0) y0 = y
            y1 = y
            ends.add(longArrayOf(left.toLong(), y.toLong()))
            if (right != left) ends.add(longArrayOf(right.toLong(), y.toLong()))
        }
        if (ends.isEmpty()) return mask.copyOf()
        val hull = monotoneChain(ends)
        if (hull.size < 3) return mask.copyOf()
        val out = mask.copyOf()
        for (y in y0..y1) {
            var lo = 0L; var hi = (w - 1).toLong(); var inside = true
            for (i in hull.indices) {
                val a = hull[i]; val b = hull[(i + 1) % hull.size]
                val dx = b[0] - a[0]; val dy = b[1] - a[1]
                // (x, y) on or left of a -> b: dy * x <= dx * (y - ay) + dy * ax
                val bound = dx * (y - a[1]) + dy * a[0]
                when {
                    dy > 0 -> hi = minOf(hi, Math.floorDiv(bound, dy))
                    dy < 0 -> lo = maxOf(lo, -Math.floorDiv(-bound, dy))
                    else -> if (dx * (y - a[1]) < 0) inside = false
                }
            }
            if (inside) for (x in lo..hi) out[y * w + x.toInt()] = true
        }
        return out
    }

    /** Hull corners of distinct integer points, counter-clockwise in (x, y), collinear points dropped. */
    private fun monotoneChain(points: List<LongArray>): List<LongArray> {
        val sorted = points.sortedWith(compareBy<LongArray>({ it[0] }, { it[1] }))
        fun turn(o: LongArray, a: LongArray, b: LongArray) = (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
        val lower = ArrayList<LongArray>()
        for (p in sorted) {
            while (lower.size >= 2 && turn(lower[lower.size - 2], lower[lower.size - 1], p) <= 0) lower.removeAt(lower.size - 1)
            lower.add(p)
        }
        val upper = ArrayList<LongArray>()
        for (p in sorted.asReversed()) {
            while (upper.size >= 2 && turn(upper[upper.size - 2], upper[upper.size - 1], p) <= 0) upper.removeAt(upper.size - 1)
            upper.add(p)
        }
        return lower.subList(0, lower.size - 1) + upper.subList(0, upper.size - 1)
    }

    /**
     * Background-removed square crop of the coin (spec step 3); no mask: the whole photo letterboxed. [cropMask]
     * "convex_hull" keeps the mask's [convexHullFill] instead of the mask.
     */
    fun coinCrop(
        image: RgbImage, mask: BooleanArray?, outSize: Int, marginFrac: Double, fill: Int, interpolation: String,
        cropMask: String = "exact",
    ): RgbImage {
        require(cropMask in CROP_MASKS) { "crop_mask=$cropMask: must be one of $CROP_MASKS" }
        if (mask == null || mask.none { it }) return letterbox(image, outSize, fill).first
        val kept = if (cropMask == "convex_hull") convexHullFill(mask, image.width, image.height) else mask
        val cut = image.data.copyOf()
        for (i in kept.indices) if (!kept[i]) { cut[i * 3] = fill.toByte(); cut[i * 3 + 1] = fill.toByte(); cut[i * 3 + 2] = fill.toByte() }
        val box = squareBbox(mask, image.width, image.height, marginFrac)
        return resizeSquare(cropPadded(RgbImage(image.width, image.height, cut), box, fill), outSize, interpolation)
    }

    /** `np.rot90(square, k)`: counter-clockwise quarter turns, an exact pixel permutation. */
    fun rot90(img: RgbImage, k: Int): RgbImage {
        val turns = ((k % 4) + 4) % 4
        if (turns == 0) return RgbImage(img.width, img.height, img.data.copyOf())
        val w = img.width; val h = img.height
        val ow = if (turns % 2 == 1) h else w
        val oh = if (turns % 2 == 1) w else h
        val out = ByteArray(ow * oh * 3)
        for (y in 0 until oh) for (x in 0 until ow) {
            // source pixel of output (y, x) for numpy's rot90
            val (sx, sy) = when (turns) {
                1 -> Pair(w - 1 - y, x)
                2 -> Pair(w - 1 - x, h - 1 - y)
                else -> Pair(y, h - 1 - x)
            }
            System.arraycopy(img.data, (sy * w + sx) * 3, out, (y * ow + x) * 3, 3)
        }
        return RgbImage(ow, oh, out)
    }

    /**
     * The crop turned by k·360/n degrees (counter-clockwise) about its centre ((S−1)/2). Quarter turns are exact
     * (`rot90`); other angles are bilinear with [fill] in the corners (float bilinear: within a level of OpenCV's
     * fixed-point `warpAffine`, which the release embedder, n = 4, never uses).
     */
    fun rotationViews(square: RgbImage, n: Int, fill: Int): List<RgbImage> {
        require(n >= 1) { "n_rotations=$n: must be an integer >= 1" }
        return (0 until n).map { k ->
            val angle = 360.0 * k / n
            if (angle % 90.0 == 0.0) rot90(square, (angle / 90).toInt()) else rotateBilinear(square, angle, fill)
        }
    }

    private fun rotateBilinear(img: RgbImage, angleDeg: Double, fill: Int): RgbImage {
        val w = img.width; val h = img.height
        val cx = (w - 1) / 2.0; val cy = (h - 1) / 2.0
        val a = Math.toRadians(angleDeg)
        val cos = Math.cos(a); val sin = Math.sin(a)
        val out = ByteArray(w * h * 3)
        for (y in 0 until h) for (x in 0 until w) {
            // inverse of cv2.getRotationMatrix2D(centre, angle, 1): dst -> src
            val dx = x - cx; val dy = y - cy
            val sx = cos * dx - sin * dy + cx
            val sy = sin * dx + cos * dy + cy
            val x0 = floor(sx).toInt(); val y0 = floor(sy).toInt()
            val fx = sx - x0; val fy = sy - y0
            for (c in 0 until 3) {
                fun p(xx: Int, yy: Int): Double = if (xx in 0 until w && yy in 0 until h) img[xx, yy, c].toDouble() else fill.toDouble()
                val v = (p(x0, y0) * (1 - fx) + p(x0 + 1, y0) * fx) * (1 - fy) + (p(x0, y0 + 1) * (1 - fx) + p(x0 + 1, y0 + 1) * fx) * fy
                out[(y * w + x) * 3 + c] = Math.rint(v).toInt().coerceIn(0, 255).toByte()
            }
        }
        return RgbImage(w, h, out)
    }

    /** L2-normalised mean of L2-normalised rows, float32 (Python `mean_unit_vector`). */
    fun meanUnitVector(rows: List<FloatArray>): FloatArray {
        val d = rows[0].size
        val mean = FloatArray(d)
        for (r in rows) {
            var n = 0.0; for (v in r) n += v.toDouble() * v
            val norm = maxOf(Math.sqrt(n).toFloat(), 1e-12f)
            for (j in 0 until d) mean[j] += r[j] / norm
        }
        for (j in 0 until d) mean[j] /= rows.size.toFloat()
        var n = 0.0; for (v in mean) n += v.toDouble() * v
        val norm = maxOf(Math.sqrt(n).toFloat(), 1e-12f)
        return FloatArray(d) { mean[it] / norm }
    }
}
