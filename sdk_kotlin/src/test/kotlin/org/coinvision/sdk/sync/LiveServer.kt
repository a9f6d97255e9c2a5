package org.coinvision.sdk.sync

import org.coinvision.sdk.Json
import org.coinvision.sdk.JsonValue
import org.coinvision.sdk.TestPaths
import java.io.ByteArrayOutputStream
import java.io.File
import java.net.HttpURLConnection
import java.net.ServerSocket
import java.net.URL
import java.util.concurrent.TimeUnit

/**
 * A real `coinvision serve` on loopback, started the way an operator does (docs/SYNC_SERVER.md): tokens and the
 * public key from the CLI, the release ONNX models, SQLite in a temp data dir. The CLI is `$COINVISION_BIN`, by
 * default the repository's `.venv/bin/coinvision`.
 */
class LiveServer(val dataDir: File) : AutoCloseable {
    private val bin = System.getenv("COINVISION_BIN")?.takeIf { it.isNotBlank() }
        ?: File(TestPaths.root, ".venv/bin/coinvision").path
    private val env = mapOf("OMP_NUM_THREADS" to "1", "COINVISION_SIGNING_KEY" to "")
    val maintainerToken: String
    val deviceToken: String
    val publicKey: String
    val port: Int = ServerSocket(0).use { it.localPort }
    val url = "http://127.0.0.1:$port"
    private val process: Process
    private val log = File(dataDir.parentFile, "server-$port.log")

    init {
        dataDir.mkdirs()
        maintainerToken = cli("token", "create", "--scope", "maintainer", "--data-dir", dataDir.path)
        deviceToken = cli("token", "create", "--scope", "device", "--data-dir", dataDir.path)
        publicKey = cli("keys", "public", "--data-dir", dataDir.path)
        process = ProcessBuilder(bin, "serve", "--host", "127.0.0.1", "--port", "$port", "--data-dir", dataDir.path,
            "--models", TestPaths.models.path)
            .apply { environment().putAll(env); redirectErrorStream(true); redirectOutput(log) }
            .start()
        waitHealthy()
    }

    private fun cli(vararg args: String): String {
        val p = ProcessBuilder(bin, *args).apply { environment().putAll(env); redirectErrorStream(false) }.start()
        val out = p.inputStream.readBytes().toString(Charsets.UTF_8)
        val err = p.errorStream.readBytes().toString(Charsets.UTF_8)
        check(p.waitFor(120, TimeUnit.SECONDS) && p.exitValue() == 0) { "coinvision ${args.joinToString(" ")} failed: $err" }
        return out.trim()
    }

    private fun waitHealthy() {
        val deadline = System.nanoTime() + 120_000_000_000L
        while (true) {
            try {
                if (request("GET", "/v1/health", null).first == 200) return
            } catch (e: java.io.IOException) {
                check(process.isAlive) { "coinvision serve exited: ${log.readText()}" }
                check(System.nanoTime() < deadline) { "coinvision serve not healthy in 120 s: ${log.readText()}" }
            }
            Thread.sleep(300)
        }
    }

    /** (status, body) of one request with the maintainer token (or [token]). */
    fun request(method: String, path: String, body: ByteArray?, contentType: String = "application/json",
                token: String? = maintainerToken): Pair<Int, ByteArray> {
        val c = URL(url + path).openConnection() as HttpURLConnection
        c.requestMethod = method
        c.connectTimeout = 10_000
        c.readTimeout = 120_000
        token?.let { c.setRequestProperty("Authorization", "Bearer $it") }
        if (body != null) {
            c.doOutput = true
            c.setRequestProperty("Content-Type", contentType)
            c.outputStream.use { it.write(body) }
        }
        val status = c.responseCode
        val bytes = (if (status >= 400) c.errorStream else c.inputStream)?.use { it.readBytes() } ?: ByteArray(0)
        return status to bytes
    }

    fun json(method: String, path: String, body: String? = null): JsonValue {
        val (status, bytes) = request(method, path, body?.toByteArray())
        val text = bytes.toString(Charsets.UTF_8)
        check(status in 200..299) { "$method $path -> $status: $text" }
        return Json.parse(text)
    }

    /** The maintainer flow: catalog, coin, reference photos (multipart field `image`). */
    fun addCoin(catalog: String, coinId: String, label: String, photos: List<File>) {
        val (s, b) = request("POST", "/v1/catalogs", """{"id": "$catalog", "name": "$catalog"}""".toByteArray())
        check(s == 201 || s == 409) { "create catalog: $s ${b.toString(Charsets.UTF_8)}" }
        json("PUT", "/v1/catalogs/$catalog/coins/$coinId", """{"label": "$label", "country": "x"}""")
        val boundary = "----coinvision${System.nanoTime()}"
        val out = ByteArrayOutputStream()
        for (p in photos) {
            out.write("--$boundary\r\nContent-Disposition: form-data; name=\"image\"; filename=\"${p.name}\"\r\nContent-Type: image/jpeg\r\n\r\n".toByteArray())
            out.write(p.readBytes()); out.write("\r\n".toByteArray())
        }
        out.write("--$boundary--\r\n".toByteArray())
        val (status, body) = request("POST", "/v1/catalogs/$catalog/coins/$coinId/images", out.toByteArray(),
            "multipart/form-data; boundary=$boundary")
        check(status == 201) { "upload: $status ${body.toString(Charsets.UTF_8)}" }
    }

    fun publish(catalog: String): JsonValue = json("POST", "/v1/catalogs/$catalog/publish", "{}")

    fun packBytes(catalog: String, version: Long): ByteArray {
        val (s, b) = request("GET", "/v1/catalogs/$catalog/versions/$version/pack", null)
        check(s == 200) { "pack v$version: $s" }
        return b
    }

    fun stop() {
        if (process.isAlive) {
            process.destroy()
            if (!process.waitFor(30, TimeUnit.SECONDS)) process.destroyForcibly().waitFor()
        }
    }

    override fun close() = stop()
}
