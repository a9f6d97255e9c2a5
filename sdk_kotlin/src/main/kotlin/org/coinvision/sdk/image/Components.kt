package org.coinvision.sdk.image

import kotlin.math.hypot
import kotlin.math.sqrt

/** Binary-mask operations of the pipeline (spec steps 2.3 and 2.6), written after OpenCV's definitions. */
object Components {
    /** 8-connected labels (1..count, 0 = background) in raster order of each component's first pixel, and areas. */
    fun label8(mask: BooleanArray, w: Int, h: Int): Pair<IntArray, IntArray> {
        val labels = IntArray(w * h)
        val areas = ArrayList<Int>()
        areas.add(0)
        val stack = IntArray(w * h)
        var next = 0
        for (start in 0 until w * h) {
            if (!mask[start] || labels[start] != 0) continue
            next++
            var sp = 0
            stack[sp++] = start
            labels[start] = next
            var area = 0
            while (sp > 0) {
                val p = stack[--sp]
                area++
                val x = p % w; val y = p / w
                for (dy in -1..1) for (dx in -1..1) {
                    val nx = x + dx; val ny = y + dy
                    if (nx < 0 || ny < 0 || nx >= w || ny >= h) continue
                    val q = ny * w + nx
                    if (mask[q] && labels[q] == 0) { labels[q] = next; stack[sp++] = q }
                }
            }
            areas.add(area)
        }
        return labels to areas.toIntArray()
    }

    /**
     * Only the largest 8-connected component; null when it covers less than [minAreaFrac] of the image.
     * [splitTouching]: that component is first cut into its coins and the largest coin kept ([splitTouchingCoins]).
     */
    fun largestComponent(mask: BooleanArray, w: Int, h: Int, minAreaFrac: Double, splitTouching: Boolean): BooleanArray? {
        val (labels, areas) = label8(mask, w, h)
        if (areas.size <= 1) return null
        var best = 1
        for (i in 2 until areas.size) if (areas[i] > areas[best]) best = i
        if (areas[best] < minAreaFrac * mask.size) return null
        val component = BooleanArray(w * h) { labels[it] == best }
        return if (splitTouching) splitTouchingCoins(component, w, h) else component
    }

    /** The outer border of the 8-connected component containing [start] (its first pixel in raster order). */
    private fun outerBorder(m: BooleanArray, w: Int, h: Int, start: Int): List<IntArray> {
        val dx = intArrayOf(1, 1, 0, -1, -1, -1, 0, 1) // E, SE, S, SW, W, NW, N, NE (clockwise, y down)
        val dy = intArrayOf(0, 1, 1, 1, 0, -1, -1, -1)
        fun fg(x: Int, y: Int) = x in 0 until w && y in 0 until h && m[y * w + x]
        val sx = start % w; val sy = start / w
        val pts = ArrayList<IntArray>()
        pts.add(intArrayOf(sx, sy))
        var cx = sx; var cy = sy
        var searchFrom = 5 // the pixel west of the start is background: look from north-west, clockwise
        var firstDir = -1
        var steps = 0
        while (steps++ < 4 * w * h + 8) {
            var d = -1
            for (i in 0 until 8) {
                val k = (searchFrom + i) % 8
                if (fg(cx + dx[k], cy + dy[k])) { d = k; break }
            }
            if (d < 0) return pts // a single pixel
            // back at the start about to repeat the first move: the border is closed (Jacob's criterion)
            if (cx == sx && cy == sy && d == firstDir) break
            if (firstDir < 0) firstDir = d
            cx += dx[d]; cy += dy[d]
            pts.add(intArrayOf(cx, cy))
            searchFrom = (d + 6) % 8
        }
        if (pts.size > 1 && pts.last()[0] == sx && pts.last()[1] == sy) pts.removeAt(pts.size - 1)
        return pts
    }

    private fun polygonArea(p: List<IntArray>): Double {
        var a = 0.0
        for (i in p.indices) {
            val q = p[(i + 1) % p.size]
            a += p[i][0].toDouble() * q[1] - q[0].toDouble() * p[i][1]
        }
        return Math.abs(a) / 2.0
    }

    private fun hullArea(points: List<IntArray>): Double {
        val pts = points.distinctBy { it[0].toLong() shl 32 or (it[1].toLong() and 0xffffffffL) }
            .sortedWith(compareBy({ it[0] }, { it[1] }))
        if (pts.size < 3) return 0.0
        fun cross(o: IntArray, a: IntArray, b: IntArray) =
            (a[0] - o[0]).toLong() * (b[1] - o[1]) - (a[1] - o[1]).toLong() * (b[0] - o[0])
        val hull = ArrayList<IntArray>()
        for (p in pts) { while (hull.size >= 2 && cross(hull[hull.size - 2], hull[hull.size - 1], p) <= 0) hull.removeAt(hull.size - 1); hull.add(p) }
        val lower = hull.size + 1
        for (p in pts.reversed().drop(1)) { while (hull.size >= lower && cross(hull[hull.size - 2], hull[hull.size - 1], p) <= 0) hull.removeAt(hull.size - 1); hull.add(p) }
        hull.removeAt(hull.size - 1)
        return polygonArea(hull)
    }

    /** OpenCV's DIST_L2 with a 5×5 mask: the chamfer distance (1, 1.4, 2.1969) in 16-bit fixed point. */
    fun distanceTransform5(m: BooleanArray, w: Int, h: Int): FloatArray {
        val hv = Math.rint(1.0 * 65536).toLong()
        val diag = Math.rint(1.4f.toDouble() * 65536).toLong()
        val long = Math.rint(2.1969f.toDouble() * 65536).toLong()
        val init = Int.MAX_VALUE.toLong()
        val b = 2
        val tw = w + 2 * b
        val t = LongArray(tw * (h + 2 * b)) { init }
        fun at(x: Int, y: Int) = t[(y + b) * tw + x + b]
        for (y in 0 until h) for (x in 0 until w) {
            if (!m[y * w + x]) { t[(y + b) * tw + x + b] = 0; continue }
            var v = at(x - 1, y - 2) + long
            v = minOf(v, at(x + 1, y - 2) + long, at(x - 2, y - 1) + long)
            v = minOf(v, at(x - 1, y - 1) + diag, at(x, y - 1) + hv)
            v = minOf(v, at(x + 1, y - 1) + diag, at(x + 2, y - 1) + long)
            v = minOf(v, at(x - 1, y) + hv)
            t[(y + b) * tw + x + b] = v and 0xffffffffL
        }
        val out = FloatArray(w * h)
        val scale = 1f / 65536f
        for (y in h - 1 downTo 0) for (x in w - 1 downTo 0) {
            var v = at(x, y)
            if (v > hv) {
                v = minOf(v, at(x + 1, y + 2) + long, at(x - 1, y + 2) + long)
                v = minOf(v, at(x + 2, y + 1) + long, at(x + 1, y + 1) + diag)
                v = minOf(v, at(x, y + 1) + hv, at(x - 1, y + 1) + diag)
                v = minOf(v, at(x - 2, y + 1) + long, at(x + 1, y) + hv)
                v = v and 0xffffffffL
                t[(y + b) * tw + x + b] = v
            }
            out[y * w + x] = (v.toFloat() * scale)
        }
        return out
    }

    /** `cv2.getStructuringElement(MORPH_ELLIPSE, (s, s))`. */
    fun ellipse(s: Int): Array<BooleanArray> {
        val r = s / 2
        val c = s / 2
        val inv = if (r > 0) 1.0 / (r.toDouble() * r) else 0.0
        return Array(s) { i ->
            val row = BooleanArray(s)
            val dy = i - r
            if (Math.abs(dy) <= r) {
                val dx = Math.rint(c * sqrt((r * r - dy * dy) * inv)).toInt()
                for (j in maxOf(c - dx, 0) until minOf(c + dx + 1, s)) row[j] = true
            }
            row
        }
    }

    /**
     * The largest coin of one connected mask that may hold touching coins (Python `split_touching_coins`): on a copy
     * of the component's box at most [workPx] wide (area-resampled, >= 0.5), a copy filling >= [maxSolidity] of its
     * convex hull is one coin; otherwise the filled outline's distance transform gives coin centres (local maxima >=
     * [minPeakFrac] of the peak) and radii, pixels go to the centre of least power distance, parts whose cut is not a
     * neck are merged, and the largest part (resized back, bilinear >= 0.5) is intersected with the component.
     */
    fun splitTouchingCoins(component: BooleanArray, w: Int, h: Int, minPeakFrac: Double = 0.35, maxNeckFrac: Double = 0.8,
                           maxSolidity: Double = 0.97, workPx: Int = 96): BooleanArray {
        var bx0 = Int.MAX_VALUE; var by0 = Int.MAX_VALUE; var bx1 = -1; var by1 = -1
        for (y in 0 until h) for (x in 0 until w) if (component[y * w + x]) {
            if (x < bx0) bx0 = x; if (x > bx1) bx1 = x; if (y < by0) by0 = y; if (y > by1) by1 = y
        }
        if (bx1 < 0) return component
        val bw = bx1 - bx0 + 1
        val bh = by1 - by0 + 1
        val scale = minOf(1.0, workPx.toDouble() / maxOf(bw, bh))
        var cw = bw; var ch = bh
        var crop = BooleanArray(bw * bh) { component[(by0 + it / bw) * w + bx0 + it % bw] }
        if (scale < 1.0) {
            cw = maxOf(1, ImageOps.roundHalfEven(bw * scale)); ch = maxOf(1, ImageOps.roundHalfEven(bh * scale))
            val f = ImageOps.resizeAreaF32(FloatArray(bw * bh) { if (crop[it]) 1f else 0f }, bw, bh, cw, ch)
            crop = BooleanArray(cw * ch) { f[it] >= 0.5f }
        }
        // the outer contour of largest area, among the copy's components
        val (labels, areas) = label8(crop, cw, ch)
        if (areas.size <= 1) return component
        var outline: List<IntArray>? = null
        var outlineArea = -1.0
        var outlineLabel = 0
        val firstPixel = IntArray(areas.size) { -1 }
        for (i in labels.indices) if (labels[i] > 0 && firstPixel[labels[i]] < 0) firstPixel[labels[i]] = i
        for (l in 1 until areas.size) {
            val one = BooleanArray(cw * ch) { labels[it] == l }
            val border = outerBorder(one, cw, ch, firstPixel[l])
            val a = polygonArea(border)
            if (a > outlineArea) { outlineArea = a; outline = border; outlineLabel = l }
        }
        if (outlineArea >= maxSolidity * maxOf(hullArea(outline!!), 1.0)) return component // convex: one coin
        // the outline filled (holes closed): pixels not reachable from outside through 4-connected non-part pixels
        val part = BooleanArray(cw * ch) { labels[it] == outlineLabel }
        val outside = BooleanArray(cw * ch)
        val stack = ArrayDeque<Int>()
        for (x in 0 until cw) for (y in listOf(0, ch - 1)) { val p = y * cw + x; if (!part[p] && !outside[p]) { outside[p] = true; stack.add(p) } }
        for (y in 0 until ch) for (x in listOf(0, cw - 1)) { val p = y * cw + x; if (!part[p] && !outside[p]) { outside[p] = true; stack.add(p) } }
        while (stack.isNotEmpty()) {
            val p = stack.removeLast()
            val x = p % cw; val y = p / cw
            for ((nx, ny) in listOf(x + 1 to y, x - 1 to y, x to y + 1, x to y - 1)) {
                if (nx < 0 || ny < 0 || nx >= cw || ny >= ch) continue
                val q = ny * cw + nx
                if (!part[q] && !outside[q]) { outside[q] = true; stack.add(q) }
            }
        }
        val small = BooleanArray(cw * ch) { !outside[it] }
        val dist = distanceTransform5(small, cw, ch)
        val peak = dist.maxOrNull()!!.toDouble()
        if (peak < 3.0) return component
        val size = maxOf(3, 2 * ImageOps.roundHalfEven(minPeakFrac * peak) + 1)
        val kernel = ellipse(size)
        val half = size / 2
        val localMax = BooleanArray(cw * ch)
        for (y in 0 until ch) for (x in 0 until cw) {
            var mx = Float.NEGATIVE_INFINITY
            for (ky in 0 until size) {
                val yy = y + ky - half
                if (yy < 0 || yy >= ch) continue
                for (kx in 0 until size) {
                    val xx = x + kx - half
                    if (xx < 0 || xx >= cw || !kernel[ky][kx]) continue
                    val v = dist[yy * cw + xx]
                    if (v > mx) mx = v
                }
            }
            val d = dist[y * cw + x]
            localMax[y * cw + x] = d >= mx && d.toDouble() >= minPeakFrac * peak
        }
        val (peaks, peakAreas) = label8(localMax, cw, ch)
        val count = peakAreas.size // background + peaks
        if (count <= 2) return component
        val idx = (0 until cw * ch).filter { small[it] }
        val owner = IntArray(cw * ch) { -1 }
        val power = Array(count - 1) { FloatArray(idx.size) }
        for (k in 1 until count) {
            var sy = 0.0; var sx = 0.0; var n = 0; var r = Float.NEGATIVE_INFINITY
            for (i in peaks.indices) if (peaks[i] == k) { sy += i / cw; sx += i % cw; n++; if (dist[i] > r) r = dist[i] }
            val cy = sy / n; val cx = sx / n
            val rr = r.toDouble()
            for ((j, p) in idx.withIndex()) {
                val ddx = (p % cw) - cx; val ddy = (p / cw) - cy
                power[k - 1][j] = (ddx * ddx + ddy * ddy - rr * rr).toFloat()
            }
        }
        for ((j, p) in idx.withIndex()) {
            var best = 0
            for (k in 1 until count - 1) if (power[k][j] < power[best][j]) best = k
            owner[p] = best
        }
        val regions = List(count - 1) { k -> BooleanArray(cw * ch) { owner[it] == k } }
        val sums = regions.map { r -> r.count { it } }
        val parent = IntArray(regions.size) { it }
        fun root(i0: Int): Int { var i = i0; while (parent[i] != i) i = parent[i]; return i }
        for (i in regions.indices) {
            val grown = BooleanArray(cw * ch)
            for (y in 0 until ch) for (x in 0 until cw) {
                var any = false
                for (dy in -1..1) for (dx in -1..1) {
                    val nx = x + dx; val ny = y + dy
                    if (nx in 0 until cw && ny in 0 until ch && regions[i][ny * cw + nx]) any = true
                }
                grown[y * cw + x] = any
            }
            for (j in i + 1 until regions.size) {
                var minX = Int.MAX_VALUE; var maxX = -1; var minY = Int.MAX_VALUE; var maxY = -1
                for (p in 0 until cw * ch) if (grown[p] && regions[j][p]) {
                    val x = p % cw; val y = p / cw
                    if (x < minX) minX = x; if (x > maxX) maxX = x; if (y < minY) minY = y; if (y > maxY) maxY = y
                }
                if (maxX < 0) continue
                val neck = hypot((maxX - minX).toDouble(), (maxY - minY).toDouble()) + 1.0
                val diameter = 2.0 * sqrt(minOf(sums[i], sums[j]) / Math.PI)
                if (neck >= maxNeckFrac * diameter) parent[root(j)] = root(i)
            }
        }
        val groups = LinkedHashMap<Int, BooleanArray>()
        for (i in regions.indices) {
            val g = groups.getOrPut(root(i)) { BooleanArray(cw * ch) }
            for (p in g.indices) if (regions[i][p]) g[p] = true
        }
        if (groups.size <= 1) return component
        var kept: BooleanArray? = null
        var keptSum = -1
        for (g in groups.values) { val s = g.count { it }; if (s > keptSum) { keptSum = s; kept = g } }
        val back: BooleanArray = if (scale == 1.0) kept!! else {
            val f = ImageOps.resizeLinearF32(FloatArray(cw * ch) { if (kept!![it]) 1f else 0f }, cw, ch, bw, bh)
            BooleanArray(bw * bh) { f[it] >= 0.5f }
        }
        val out = BooleanArray(w * h)
        for (y in 0 until bh) for (x in 0 until bw) {
            val p = (by0 + y) * w + bx0 + x
            out[p] = back[y * bw + x] && component[p]
        }
        return out
    }
}
