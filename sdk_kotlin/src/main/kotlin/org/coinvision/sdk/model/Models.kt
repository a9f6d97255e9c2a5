package org.coinvision.sdk.model

import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtException
import ai.onnxruntime.OrtSession
import org.coinvision.sdk.Json
import org.coinvision.sdk.JsonArray
import org.coinvision.sdk.JsonBool
import org.coinvision.sdk.JsonException
import org.coinvision.sdk.JsonNumber
import org.coinvision.sdk.JsonObject
import org.coinvision.sdk.JsonValue
import org.coinvision.sdk.ModelLoadException
import java.io.File
import java.nio.FloatBuffer

/** How an RGB uint8 image becomes a model input (metadata `input`). */
data class InputSpec(
    val sizePx: Int,
    val mean: FloatArray,
    val std: FloatArray,
    val layout: String,
    val padValue: Int,
    val interpolation: String,
)

/**
 * The metadata every exported model carries in its `<model>.meta.json` sidecar (Python `model_meta.ModelMetadata`).
 * Nothing in the pipeline is hard-coded: sizes, normalisation, thresholds and the `extra` switches come from here.
 */
class ModelMetadata(
    val name: String,
    val fingerprint: String,
    val input: InputSpec,
    val output: String,
    val embeddingDim: Int?,
    val threshold: Double?,
    val extra: Map<String, JsonValue>,
) {
    fun extraDouble(key: String, default: Double): Double = (extra[key] as? JsonNumber)?.text?.toDouble() ?: default
    fun extraBool(key: String, default: Boolean): Boolean = (extra[key] as? JsonBool)?.value ?: default
    fun extraInt(key: String): Int? = (extra[key] as? JsonNumber)?.takeIf { it.isInteger }?.text?.toIntOrNull()

    companion object {
        const val SCHEMA_VERSION = 1

        fun parse(text: String, where: String = "model metadata"): ModelMetadata {
            val d = try { Json.parse(text) as? JsonObject } catch (e: JsonException) { null }
                ?: throw ModelLoadException("$where is not valid JSON; re-export the model with `coinvision export`")
            try {
                val schema = d["schema_version"]?.long ?: SCHEMA_VERSION.toLong()
                if (schema > SCHEMA_VERSION) {
                    throw ModelLoadException("$where: schema $schema is newer than this SDK understands ($SCHEMA_VERSION); update the SDK")
                }
                val inp = d["input"] as JsonObject
                fun floats(k: String) = (inp[k] as JsonArray).items.map { it.double.toFloat() }.toFloatArray()
                val spec = InputSpec(
                    sizePx = inp["size_px"]!!.long!!.toInt(),
                    mean = floats("mean"), std = floats("std"),
                    layout = inp["layout"]?.string ?: "NCHW",
                    padValue = inp["pad_value"]?.long?.toInt() ?: 0,
                    interpolation = inp["interpolation"]?.string ?: "bilinear",
                )
                if (spec.sizePx < 16) throw ModelLoadException("$where: input.size_px=${spec.sizePx} must be >= 16; re-export the model")
                if (spec.layout !in setOf("NCHW", "NHWC")) throw ModelLoadException("$where: input.layout=${spec.layout} must be NCHW or NHWC")
                if (spec.interpolation !in setOf("bilinear", "area")) {
                    throw ModelLoadException("$where: input.interpolation=${spec.interpolation} must be 'bilinear' or 'area'")
                }
                if ((inp["color_order"]?.string ?: "RGB") != "RGB") throw ModelLoadException("$where: only RGB colour order is supported")
                return ModelMetadata(
                    name = d["name"]!!.string!!,
                    fingerprint = d["fingerprint"]!!.string!!,
                    input = spec,
                    output = d["output"]!!.string!!,
                    embeddingDim = d["embedding_dim"]?.long?.toInt(),
                    threshold = (d["threshold"] as? JsonNumber)?.text?.toDouble(),
                    extra = (d["extra"] as? JsonObject)?.map ?: emptyMap(),
                )
            } catch (e: ModelLoadException) {
                throw e
            } catch (e: RuntimeException) {
                throw ModelLoadException("$where is incomplete or invalid (${e.javaClass.simpleName}: ${e.message}); re-export the model", e)
            }
        }

        fun readSidecar(model: File): ModelMetadata {
            val f = File(model.path + ".meta.json")
            if (!f.isFile) throw ModelLoadException("$model: metadata file ${f.name} is missing; re-run coinvision export")
            return parse(f.readText(), f.path)
        }
    }
}

/**
 * One model on one runtime: float32 input in the layout of its metadata, float32 output. Implementations:
 * [OnnxModelRuntime] (ONNX Runtime, JVM and Android), and on Android a LiteRT/TFLite one (see README.md).
 * Not thread-safe unless the implementation says so.
 */
interface ModelRuntime : AutoCloseable {
    val meta: ModelMetadata
    /** Run on one input tensor of [shape] (batch 1); returns the flattened float32 output. */
    fun run(input: FloatArray, shape: LongArray): FloatArray
}

/** ONNX Runtime's Java API on CPU (`com.microsoft.onnxruntime:onnxruntime`, or `onnxruntime-android`). */
class OnnxModelRuntime(file: File, override val meta: ModelMetadata = ModelMetadata.readSidecar(file), numThreads: Int? = 1) : ModelRuntime {
    private val env: OrtEnvironment
    private val session: OrtSession
    private val inputName: String

    init {
        if (!file.isFile) throw ModelLoadException("$file: model file is missing; export it with `coinvision export` or fix the path")
        try {
            env = OrtEnvironment.getEnvironment()
            val opts = OrtSession.SessionOptions()
            numThreads?.let { opts.setIntraOpNumThreads(it) }
            opts.setInterOpNumThreads(1)
            session = env.createSession(file.path, opts)
            inputName = session.inputNames.first()
        } catch (e: OrtException) {
            throw ModelLoadException("$file: ONNX Runtime cannot load it (${e.message}); re-export the model", e)
        } catch (e: UnsatisfiedLinkError) {
            throw ModelLoadException("$file: the ONNX Runtime native library does not load here (${e.message})", null)
        }
    }

    override fun run(input: FloatArray, shape: LongArray): FloatArray {
        OnnxTensor.createTensor(env, FloatBuffer.wrap(input), shape).use { t ->
            session.run(mapOf(inputName to t)).use { out ->
                val v = out[0] as OnnxTensor
                val fb = v.floatBuffer
                return FloatArray(fb.remaining()).also { fb.get(it) }
            }
        }
    }

    override fun close() = session.close()
}
