package org.coinvision.sdk.tools

import ai.onnxruntime.OrtEnvironment
import org.coinvision.sdk.Json
import org.coinvision.sdk.Recognizer
import org.coinvision.sdk.image.ImageIoDecoder
import org.coinvision.sdk.pack.PackReader
import java.io.File

/**
 * Per-photo latency of the Kotlin pipeline, for benchmarks/bench_sdk_latency.py: the photos' bytes are read into
 * memory first, then each `recognize` is timed from those bytes to the top-5 (javax.imageio decode included, and
 * timed on its own), ONNX Runtime with 1 intra-op and 1 inter-op thread, after untimed warm-up calls.
 * Prints one JSON object on stdout.
 *
 *     java -XX:+UseSerialGC -cp target/classes:$(cat cp.txt) org.coinvision.sdk.tools.Bench \
 *         --models ../models/release --pack sample.pack --photos photos.txt [--root ..] [--warmup 5] [--passes 1]
 *
 * `photos.txt`: one photo path per line (relative to `--root`), the ids written back in the output.
 */
object Bench {
    private fun quote(s: String): String = StringBuilder().also { Json.quote(s, it) }.toString()

    @JvmStatic
    fun main(args: Array<String>) {
        val opts = args.toList().chunked(2).associate { (k, v) -> k.removePrefix("--") to v }
        val root = File(opts["root"] ?: ".")
        val models = File(opts["models"] ?: error("--models DIR"))
        val packFile = File(opts["pack"] ?: error("--pack FILE"))
        val names = File(opts["photos"] ?: error("--photos LIST")).readLines().map { it.trim() }.filter { it.isNotEmpty() }
        val warmup = (opts["warmup"] ?: "5").toInt()
        val passes = (opts["passes"] ?: "1").toInt()

        val loadStart = System.nanoTime()
        val decoder = ImageIoDecoder()
        val rec = Recognizer.fromDir(models, numThreads = 1)
        rec.loadPack(PackReader.read(packFile))
        val loadMs = (System.nanoTime() - loadStart) / 1e6
        val bytes = names.map { File(root, it).readBytes() }

        rec.use {
            for (i in 0 until warmup) rec.recognize(decoder.decode(bytes[i % bytes.size]), 5)
            val total = Array(names.size) { ArrayList<Double>() }
            val decode = Array(names.size) { ArrayList<Double>() }
            val stages = Array(names.size) { ArrayList<Map<String, Double>>() }
            val top = arrayOfNulls<String>(names.size)
            val unknown = BooleanArray(names.size)
            for (pass in 0 until passes) {
                for (i in names.indices) {
                    val t0 = System.nanoTime()
                    val image = decoder.decode(bytes[i])
                    val t1 = System.nanoTime()
                    val r = rec.recognize(image, 5)
                    val t2 = System.nanoTime()
                    total[i].add((t2 - t0) / 1e6)
                    decode[i].add((t1 - t0) / 1e6)
                    stages[i].add(r.timingsMs)
                    if (pass == 0) {
                        top[i] = r.matches.joinToString(",", "[", "]") { "[${quote(it.coinId)},${it.score}]" }
                        unknown[i] = r.unknown
                    }
                }
            }
            val photos = names.indices.joinToString(",", "[", "]") { i ->
                val st = stages[i].joinToString(",", "[", "]") { m ->
                    m.entries.joinToString(",", "{", "}") { (k, v) -> "${quote(k)}:$v" }
                }
                "{\"file\":${quote(names[i])},\"top5\":${top[i]},\"unknown\":${unknown[i]}," +
                    "\"total_ms\":${total[i].joinToString(",", "[", "]")},\"decode_ms\":${decode[i].joinToString(",", "[", "]")}," +
                    "\"stages_ms\":$st}"
            }
            val rt = Runtime.getRuntime()
            println(
                "{\"sdk\":\"kotlin\",\"runtime\":\"onnx\",\"ort\":${quote("onnxruntime-java " + OrtEnvironment.getEnvironment().version)},\"ort_threads\":{\"intra_op\":1,\"inter_op\":1}," +
                    "\"jvm\":${quote(System.getProperty("java.vm.name") + " " + System.getProperty("java.version"))}," +
                    "\"available_processors\":${rt.availableProcessors()},\"decoder\":\"javax.imageio (ImageIoDecoder)\"," +
                    "\"load_ms\":$loadMs,\"warmup\":$warmup,\"passes\":$passes,\"photos\":$photos}"
            )
        }
    }
}
