package org.coinvision.sdk

import org.coinvision.sdk.image.Components
import org.coinvision.sdk.image.ImageDecoder
import org.coinvision.sdk.image.ImageIoDecoder
import org.coinvision.sdk.image.ImageOps
import org.coinvision.sdk.image.Letterbox
import org.coinvision.sdk.image.RgbImage
import org.coinvision.sdk.model.ModelMetadata
import org.coinvision.sdk.model.ModelRuntime
import org.coinvision.sdk.model.OnnxModelRuntime
import org.coinvision.sdk.pack.CoinRecord
import org.coinvision.sdk.pack.Pack
import java.io.File
import kotlin.math.ceil

/** Smallest segmenter `tile_frac` (spec 2.3): a 4×4 grid, 16 more segmenter calls at most. */
const val MIN_TILE_FRAC = 0.25
/** Spec 2.7: the turns of its crop the segmenter's second pass may average (segmenter metadata `views`). */
val VIEWS_ALLOWED = listOf(1, 2, 4)

/** Result of the two-pass segmentation; [mask] (H×W, row-major) is null when no coin was found. [tiled]: the first
 * pass found no coin, so the tiles of spec 2.3 ran (the mask, if any, comes from them). */
class Segmentation(val mask: BooleanArray?, val bbox: IntArray?, val passes: Int, val firstPassMask: BooleanArray?,
                   val tiled: Boolean = false) {
    val found: Boolean get() = mask != null
}

/** The segmenter and its post-processing values, all from its metadata (Python `SegmenterParams`). */
class Segmenter(val model: ModelRuntime) {
    val meta = model.meta
    val sizePx = meta.input.sizePx
    val threshold = meta.threshold ?: 0.5
    val marginFrac = meta.extraDouble("margin_frac", 0.15)
    val minAreaFrac = meta.extraDouble("min_area_frac", 0.002)
    val padValue = meta.input.padValue
    val splitTouching = meta.extraBool("split_touching", false)
    /** Spec 2.4: a crop box at least this share of the photo's longer side ends segmentation after one pass (null: never). */
    val singlePassBoxFrac: Double? = if (meta.extra.containsKey("single_pass_box_frac")) meta.extraDouble("single_pass_box_frac", Double.NaN) else null
    /** Spec 2.3: when the first pass finds no coin, a grid of tiles of this share of the photo's longer side is segmented (null: never). */
    val tileFrac: Double? = if (meta.extra.containsKey("tile_frac")) meta.extraDouble("tile_frac", Double.NaN) else null
    /** Spec 2.7: the second pass averages the maps of this many turns of its crop. */
    val views: Int = if (meta.extra.containsKey("views")) meta.extraInt("views") ?: -1 else 1

    init {
        if (meta.output != "mask_logits") throw ModelLoadException("segmenter metadata output=${meta.output}: expected mask_logits")
        if (!(threshold > 0 && threshold < 1)) throw ConfigException("segmenter threshold=$threshold: must be a probability in (0, 1), e.g. 0.5")
        if (singlePassBoxFrac != null && !(singlePassBoxFrac > 0)) throw ConfigException(
            "segmenter single_pass_box_frac=$singlePassBoxFrac: must be a number > 0 (e.g. 0.8), or absent to always run the second pass")
        if (tileFrac != null && !(tileFrac >= MIN_TILE_FRAC && tileFrac < 1.0)) throw ConfigException(
            "segmenter tile_frac=$tileFrac: must be in [$MIN_TILE_FRAC, 1) (each tile smaller than the photo, at most 4 x 4 of them; e.g. 0.4), or absent for no tiles")
        if (views !in VIEWS_ALLOWED) throw ConfigException(
            "segmenter views=${Json.canonical(meta.extra.getValue("views"))}: must be one of $VIEWS_ALLOWED (quarter turns of the second pass's crop, averaged), or absent for 1")
    }

    /** Mask logits of one `size_px` square (what the conformance kit calls `mask_logits`). */
    fun logits(square: RgbImage): FloatArray {
        val x = ImageOps.toModelInput(square, meta.input.mean, meta.input.std, meta.input.layout)
        val shape = if (meta.input.layout == "NCHW") longArrayOf(1, 3, sizePx.toLong(), sizePx.toLong()) else longArrayOf(1, sizePx.toLong(), sizePx.toLong(), 3)
        val out = model.run(x, shape)
        if (out.size != sizePx * sizePx) throw ModelLoadException("segmenter output has ${out.size} values, expected ${sizePx * sizePx}")
        return out
    }

    fun probability(square: RgbImage): FloatArray = logits(square).let { l -> FloatArray(l.size) { ImageOps.sigmoid(l[it]) } }

    /** Spec 2.7: the mean probability map of [views] turns of a square model input. */
    fun viewsProbability(square: RgbImage): FloatArray {
        val total = probability(square)
        for (k in 1 until views) {
            val turns = k * 4 / views
            val back = ImageOps.turnMap(probability(ImageOps.turnSquare(square, turns)), sizePx, -turns)
            for (i in total.indices) total[i] += back[i]
        }
        for (i in total.indices) total[i] /= views.toFloat()
        return total
    }

    private fun predictOn(image: RgbImage, viewed: Boolean = false): FloatArray {
        val (square, box: Letterbox) = ImageOps.letterbox(image, sizePx, padValue)
        return ImageOps.unletterbox(if (viewed) viewsProbability(square) else probability(square), sizePx, box)
    }

    /** Spec 2.3's tiles: an n×n grid, n = ceil(1 / tileFrac), of side ceil(tileFrac × L) spread evenly over the photo's
     * centred L×L frame from corner to corner (integer offsets k·(L − t) div (n − 1)), row by row. */
    fun tileBoxes(w: Int, h: Int, tileFrac: Double): List<IntArray> {
        val side = maxOf(w, h)
        val tile = ceil(tileFrac * side).toInt()
        val count = ceil(1.0 / tileFrac).toInt()
        val fx0 = Math.floorDiv(w - side, 2); val fy0 = Math.floorDiv(h - side, 2)
        val offsets = (0 until count).map { k -> k * (side - tile) / (count - 1) }
        return offsets.flatMap { y -> offsets.map { x -> intArrayOf(fx0 + x, fy0 + y, fx0 + x + tile, fy0 + y + tile) } }
    }

    /** A crop's probability map written into the photo-size map at [box] (inside the photo; the maximum when [keepMax]). */
    private fun paste(full: FloatArray, w: Int, h: Int, cropProb: FloatArray, box: IntArray, keepMax: Boolean) {
        val (x0, y0, x1, y1) = box
        val cw = x1 - x0
        for (y in maxOf(y0, 0) until minOf(y1, h)) for (x in maxOf(x0, 0) until minOf(x1, w)) {
            val v = cropProb[(y - y0) * cw + (x - x0)]
            full[y * w + x] = if (keepMax) maxOf(full[y * w + x], v) else v
        }
    }

    private fun keepLargest(prob: FloatArray, w: Int, h: Int): BooleanArray? =
        Components.largestComponent(BooleanArray(w * h) { prob[it] >= threshold }, w, h, minAreaFrac, splitTouching)

    /** Spec step 2: whole photo (tiles when it finds no coin), largest component, square crop segmented again,
     * pasted back (averaged over [views] turns of the crop), largest component. */
    fun segment(image: RgbImage, twoPass: Boolean = true): Segmentation {
        val w = image.width; val h = image.height
        var first = keepLargest(predictOn(image), w, h)
        val tiled = first == null && tileFrac != null
        if (tiled) {
            val full = FloatArray(w * h)
            for (box in tileBoxes(w, h, tileFrac!!)) paste(full, w, h, predictOn(ImageOps.cropPadded(image, box, padValue)), box, keepMax = true)
            first = keepLargest(full, w, h)
        }
        if (first == null) return Segmentation(null, null, 1, null, tiled)
        if (!twoPass) return Segmentation(first, ImageOps.squareBbox(first, w, h, marginFrac), 1, first, tiled)
        val box = ImageOps.squareBbox(first, w, h, marginFrac)
        if (singlePassBoxFrac != null && maxOf(box[2] - box[0], box[3] - box[1]) >= singlePassBoxFrac * maxOf(w, h)) {
            return Segmentation(first, box, 1, first, tiled)
        }
        val full = FloatArray(w * h)
        paste(full, w, h, predictOn(ImageOps.cropPadded(image, box, padValue), viewed = true), box, keepMax = false)
        val second = if (full.any { it != 0f }) keepLargest(full, w, h) else null
        val lost = second == null || second.count { it } < 0.5 * first.count { it }
        val mask = if (lost) first else second!!
        return Segmentation(mask, ImageOps.squareBbox(mask, w, h, marginFrac), 2, first, tiled)
    }
}

/** One photo through the pipeline up to the embedder. */
class Embedding(val vector: FloatArray, val segmentation: Segmentation, val crop: RgbImage, val timingsMs: Map<String, Double>)

data class Match(val coinId: String, val label: String, val score: Double, val record: CoinRecord?)

class RecognitionResult(
    val matches: List<Match>,
    val unknown: Boolean,
    val threshold: Double,
    val sides: List<Embedding>,
    val timingsMs: Map<String, Double>,
) {
    val best: Match? get() = matches.firstOrNull()
    val segmentation: Segmentation get() = sides[0].segmentation
}

/**
 * The on-device pipeline of docs/PIPELINE_SPEC.md: decode → two-pass segmentation → background-removed crop →
 * embedding averaged over the metadata's rotations → cosine search of the loaded pack → top-k or "unknown".
 * Not thread-safe (runtimes are not): one per thread, or serialise calls.
 */
class Recognizer(
    segmenter: ModelRuntime,
    private val embedder: ModelRuntime,
    unknownThreshold: Double? = null,
    private val decoder: ImageDecoder = ImageIoDecoder(),
) : AutoCloseable {
    val segmenter = Segmenter(segmenter)
    val embedderMeta: ModelMetadata = embedder.meta
    val fingerprint: String = embedderMeta.fingerprint
    val dim: Int = embedderMeta.embeddingDim ?: throw ModelLoadException("embedder metadata has no embedding_dim; re-export the model")
    val cropMarginFrac = embedderMeta.extraDouble("crop_margin_frac", 0.05)
    val backgroundRemoval = embedderMeta.extraBool("background_removal", true)
    val cropMask: String = embedderMeta.extra["crop_mask"]?.let {
        (it as? JsonString)?.value?.takeIf { v -> v in ImageOps.CROP_MASKS }
            ?: throw ModelLoadException("embedder metadata crop_mask=${Json.canonical(it)}: must be one of ${ImageOps.CROP_MASKS}; re-export the model")
    } ?: "exact"
    val embedRotations: Int = (embedderMeta.extra["embed_rotations"]?.let {
        embedderMeta.extraInt("embed_rotations")?.takeIf { n -> n in 1..64 }
            ?: throw ModelLoadException("embedder metadata embed_rotations=${Json.canonical(it)}: must be an integer in [1, 64]; re-export the model")
    } ?: 1)
    val unknownThreshold: Double = (unknownThreshold ?: embedderMeta.threshold ?: 0.5).also {
        if (!(it >= -1.0 && it <= 1.0)) throw ConfigException("unknown_threshold=$it: a cosine threshold must be in [-1, 1]")
    }
    @Volatile private var pack: Pack? = null

    init {
        if (embedderMeta.output != "embedding") throw ModelLoadException("embedder metadata output=${embedderMeta.output}: expected embedding")
    }

    companion object {
        /** `segmenter.onnx` and `embedder.onnx` (+ `.meta.json` sidecars) of [modelsDir], on ONNX Runtime. */
        fun fromDir(modelsDir: File, numThreads: Int? = 1, unknownThreshold: Double? = null): Recognizer {
            val seg = OnnxModelRuntime(File(modelsDir, "segmenter.onnx"), numThreads = numThreads)
            val emb = OnnxModelRuntime(File(modelsDir, "embedder.onnx"), numThreads = numThreads)
            return Recognizer(seg, emb, unknownThreshold)
        }
    }

    /** Use [p] for [recognize]; refuses a pack of another embedder or dim (the previous pack stays in use). */
    fun loadPack(p: Pack) {
        p.checkFingerprint(fingerprint)
        p.checkDim(dim)
        pack = p
    }

    private fun requirePack(): Pack = pack ?: throw PackException(
        "no pack loaded; call loadPack(PACK) (sync one with SyncClient or build one with `coinvision pack build`)"
    )

    /** The embedder's vector of one crop: the metadata's rotation views, each L2-normalised, averaged, normalised. */
    fun embedCrop(crop: RgbImage): FloatArray {
        val spec = embedderMeta.input
        val s = spec.sizePx.toLong()
        val shape = if (spec.layout == "NCHW") longArrayOf(1, 3, s, s) else longArrayOf(1, s, s, 3)
        val vectors = ImageOps.rotationViews(crop, embedRotations, spec.padValue).map { view ->
            embedder.run(ImageOps.toModelInput(view, spec.mean, spec.std, spec.layout), shape).also {
                if (it.size != dim) throw ModelLoadException("embedder output has ${it.size} values, expected $dim")
            }
        }
        return ImageOps.meanUnitVector(vectors)
    }

    fun embed(photo: ByteArray): Embedding = embed(decoder.decode(photo))

    fun embed(image: RgbImage): Embedding {
        val t0 = System.nanoTime()
        val seg = segmenter.segment(image)
        val t1 = System.nanoTime()
        val spec = embedderMeta.input
        val crop = ImageOps.coinCrop(image, if (backgroundRemoval) seg.mask else null, spec.sizePx, cropMarginFrac, spec.padValue, spec.interpolation, cropMask)
        val t2 = System.nanoTime()
        val v = embedCrop(crop)
        val t3 = System.nanoTime()
        return Embedding(v, seg, crop, mapOf("segment" to (t1 - t0) / 1e6, "crop" to (t2 - t1) / 1e6, "embed" to (t3 - t2) / 1e6))
    }

    private fun match(p: Pack, coinId: String, score: Double, group: String? = null): Match {
        val r = p.record(coinId)
        return Match(group ?: coinId, r?.label ?: "", score, r)
    }

    fun recognize(photo: ByteArray, topK: Int = 5): RecognitionResult = recognize(decoder.decode(photo), topK)

    /** The [topK] best coins; `unknown` when the best cosine is below [unknownThreshold]. */
    fun recognize(image: RgbImage, topK: Int = 5): RecognitionResult {
        if (topK < 1) throw ConfigException("topK=$topK: must be an integer >= 1")
        val p = requirePack()
        val e = embed(image)
        val matches = p.search(e.vector, topK).map { match(p, it.coinId, it.score) }
        return RecognitionResult(matches, matches.isEmpty() || matches[0].score < unknownThreshold, unknownThreshold, listOf(e), e.timingsMs)
    }

    fun recognizePair(obverse: ByteArray, reverse: ByteArray, topK: Int = 5): RecognitionResult =
        recognizePair(decoder.decode(obverse), decoder.decode(reverse), topK)

    /** Both sides of one coin (spec step 6): every coin scored on both photos, fused per coin group by the mean. */
    fun recognizePair(obverse: RgbImage, reverse: RgbImage, topK: Int = 5): RecognitionResult {
        if (topK < 1) throw ConfigException("topK=$topK: must be an integer >= 1")
        val p = requirePack()
        val sides = listOf(embed(obverse), embed(reverse))
        val hits = sides.map { s -> p.search(s.vector, p.coinCount).map { it.coinId to it.score } }
        val fused = fusePairScores(hits[0], hits[1]) { id -> p.record(id)?.extra?.get("coin_group")?.takeIf { it.isNotEmpty() } ?: id }
        val matches = fused.take(topK).map { (group, score, member) -> match(p, member, score, group) }
        return RecognitionResult(matches, matches.isEmpty() || matches[0].score < unknownThreshold, unknownThreshold, sides,
            sides[0].timingsMs.mapKeys { "obverse.${it.key}" } + sides[1].timingsMs.mapKeys { "reverse.${it.key}" })
    }

    override fun close() {
        segmenter.model.close(); embedder.close()
    }
}

/**
 * Python `recognizer.fuse_pair_scores`: (group, fused score, best member), best first, ties by group id.
 * A group's score per photo is its best coin's; fused = mean of both; a group missing from one list gets that
 * list's lowest score.
 */
fun fusePairScores(obverse: List<Pair<String, Double>>, reverse: List<Pair<String, Double>>, groupOf: (String) -> String): List<Triple<String, Double, String>> {
    val sides = listOf(HashMap<String, Double>(), HashMap<String, Double>())
    val bestMember = LinkedHashMap<String, Pair<Double, String>>()
    for ((side, hits) in sides.zip(listOf(obverse, reverse))) {
        for ((coin, score) in hits) {
            val g = groupOf(coin)
            side[g] = maxOf(score, side[g] ?: Double.NEGATIVE_INFINITY)
            if (score > (bestMember[g]?.first ?: Double.NEGATIVE_INFINITY)) bestMember[g] = score to coin
        }
    }
    val floors = listOf(obverse, reverse).map { h -> h.minOfOrNull { it.second } ?: 0.0 }
    return bestMember.map { (g, m) -> Triple(g, ((sides[0][g] ?: floors[0]) + (sides[1][g] ?: floors[1])) / 2.0, m.second) }
        .sortedWith(compareBy<Triple<String, Double, String>>({ -it.second }, { it.first }))
}
