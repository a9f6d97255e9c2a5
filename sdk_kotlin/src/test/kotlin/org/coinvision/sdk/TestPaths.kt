package org.coinvision.sdk

import java.io.File

/** Paths of the repository's shared test inputs, read in place (never copied into sdk_kotlin/). */
object TestPaths {
    /** The repository root: the parent of sdk_kotlin/ (Maven runs tests with the module folder as working dir). */
    val root: File = run {
        var dir: File? = File(System.getProperty("user.dir")).absoluteFile
        while (dir != null && !File(dir, "docs/PACK_FORMAT.md").isFile) dir = dir.parentFile
        dir ?: error("cannot find the repository root (docs/PACK_FORMAT.md) above ${System.getProperty("user.dir")}")
    }
    val goldenPacks = File(root, "tests/golden/packs")
    val models = File(root, "models/release")
    val samples = File(root, "examples/sample_coins")
    val conformance = File(root, "conformance")
    val kotlinGolden = File(root, "sdk_kotlin/testdata")

    fun json(file: File): JsonValue = Json.parse(file.readText())

    /** The release embedder's sidecar metadata (what a test expects the Recognizer to have read). */
    val embedderMeta: JsonValue by lazy { json(File(models, "embedder.onnx.meta.json")) }
}
