package org.coinvision.sdk.sync

import org.bouncycastle.crypto.params.Ed25519PublicKeyParameters
import org.bouncycastle.crypto.signers.Ed25519Signer
import org.coinvision.sdk.Json
import org.coinvision.sdk.JsonException
import org.coinvision.sdk.JsonNumber
import org.coinvision.sdk.JsonObject
import org.coinvision.sdk.JsonString
import org.coinvision.sdk.JsonValue
import org.coinvision.sdk.PackException
import org.coinvision.sdk.SyncException
import org.coinvision.sdk.pack.Delta
import org.coinvision.sdk.pack.Pack
import org.coinvision.sdk.pack.PackBytes
import org.coinvision.sdk.pack.PackReader
import java.io.File
import java.io.FileOutputStream
import java.io.IOException
import java.io.InputStream
import java.net.HttpURLConnection
import java.net.URI
import java.net.URL
import java.net.URLEncoder
import java.nio.file.Files
import java.nio.file.StandardCopyOption
import java.time.Instant
import java.time.LocalDateTime
import java.time.OffsetDateTime
import java.time.ZoneOffset
import java.time.format.DateTimeParseException
import java.util.Base64
import java.util.logging.Logger

/** One HTTP response: status, headers (lower-case names) and the body stream (close it). */
class HttpResponse(val status: Int, val headers: Map<String, String>, val body: InputStream) : AutoCloseable {
    override fun close() = body.close()
}

/** The network boundary of [SyncClient]: plain GETs. The default is [UrlConnectionTransport] (JVM and Android). */
fun interface HttpTransport {
    /** GET [url] with [headers]. Non-2xx statuses are returned, not thrown; I/O problems throw [IOException]. */
    @Throws(IOException::class)
    fun get(url: String, headers: Map<String, String>, timeoutMs: Int): HttpResponse
}

class UrlConnectionTransport : HttpTransport {
    override fun get(url: String, headers: Map<String, String>, timeoutMs: Int): HttpResponse {
        val conn = URL(url).openConnection() as HttpURLConnection
        conn.connectTimeout = timeoutMs
        conn.readTimeout = timeoutMs
        conn.instanceFollowRedirects = false
        headers.forEach { (k, v) -> conn.setRequestProperty(k, v) }
        val status = conn.responseCode
        val stream = (if (status >= 400) conn.errorStream else conn.inputStream) ?: InputStream.nullInputStream()
        val hs = conn.headerFields.filterKeys { it != null }.mapKeys { it.key.lowercase() }.mapValues { it.value.joinToString(",") }
        return HttpResponse(status, hs, stream)
    }
}

/** What [SyncClient.sync] did. [via]: "cache" | "full" | "delta" | "repair" (the cached pack was corrupt). */
data class SyncResult(val version: Long, val updated: Boolean, val via: String, val packFile: File, val downloadedBytes: Long)

/**
 * Keeps `cacheDir/<catalogId>/current.pack` equal to the newest verified pack of one catalog (docs/SYNC_SERVER.md,
 * "Device flow"), like the Python SDK's `SyncClient`, with the same cache layout (`current.pack`, `state.json`,
 * `downloads/<sha256>.part`).
 *
 * Before a pack replaces the cached one: the manifest's Ed25519 signature (BouncyCastle) over its canonical JSON,
 * its expiry, its catalog, no rollback below the cached version, the model fingerprint, every file's size and
 * sha256, and that the pack parses and says what the manifest says. Any failure throws [SyncException] and leaves
 * the cache as it was. Interrupted downloads resume with a Range request. Not thread-safe: one sync at a time.
 */
class SyncClient(
    baseUrl: String,
    val catalogId: String,
    cacheDir: File,
    publicKey: String,
    private val token: String? = null,
    private val expectedFingerprint: String? = null,
    private val timeoutMs: Int = 30_000,
    private val useDelta: Boolean = true,
    private val transport: HttpTransport = UrlConnectionTransport(),
    private val clock: () -> Instant = Instant::now,
) {
    private val baseUrl = baseUrl.trimEnd('/') + "/"
    val dir = File(cacheDir, catalogId)
    val packFile get() = File(dir, "current.pack")
    val stateFile get() = File(dir, "state.json")
    private val publicKey: Ed25519PublicKeyParameters = loadPublicKey(publicKey)

    // ------------------------------------------------------------------ cache (works offline)

    fun cachedState(): JsonObject? {
        if (!stateFile.isFile || !packFile.isFile) return null
        return try {
            Json.parse(stateFile.readText()) as? JsonObject
        } catch (e: JsonException) {
            log.warning("sync state $stateFile unreadable (${e.message}); treating the cache as empty"); null
        } catch (e: IOException) {
            log.warning("sync state $stateFile unreadable (${e.message}); treating the cache as empty"); null
        }
    }

    fun cachedVersion(): Long? = cachedState()?.get("version")?.long

    /** True when the cached pack's bytes hash to the sha256 recorded when it was verified and installed. */
    fun cacheIntact(state: JsonObject? = cachedState()): Boolean {
        state ?: return false
        val data = try { packFile.readBytes() } catch (e: IOException) { return false }
        return PackBytes.hex(PackBytes.sha256(data)) == state["sha256"]?.string
    }

    /** The last good pack, from the cache only (no network). */
    fun loadPack(): Pack {
        val state = cachedState()
            ?: throw SyncException("no cached pack for catalog '$catalogId' in $dir; sync once while online")
        if (!cacheIntact(state)) {
            throw SyncException(
                "the cached pack $packFile is corrupt (its sha256 is not the one installed); call sync() while online " +
                    "to download it again"
            )
        }
        return PackReader.read(packFile)
    }

    // ------------------------------------------------------------------ network

    private fun request(path: String, headers: Map<String, String> = emptyMap()): HttpResponse {
        val url = URI(baseUrl).resolve(path.trimStart('/')).toString()
        val all = LinkedHashMap(headers)
        token?.let { all["Authorization"] = "Bearer $it" }
        val resp = try {
            transport.get(url, all, timeoutMs)
        } catch (e: IOException) {
            throw SyncException("cannot reach the sync server at $baseUrl (${e.message}); using the cached pack", e)
        }
        if (resp.status >= 400) {
            val detail = resp.use { String(it.body.readNBytes(2000), Charsets.UTF_8) }
            throw SyncException("server answered ${resp.status} for $path: $detail")
        }
        return resp
    }

    /** Download and verify the signed manifest; returns its payload. */
    fun fetchManifest(): JsonObject {
        val text = try {
            request("v1/catalogs/${URLEncoder.encode(catalogId, "UTF-8").replace("+", "%20")}/manifest").use {
                String(it.body.readNBytes(1_000_000), Charsets.UTF_8)
            }
        } catch (e: IOException) {
            throw SyncException("manifest download failed (${e.message})", e)
        }
        val doc = try { Json.parse(text) } catch (e: JsonException) { throw SyncException("manifest is not valid JSON (${e.message})") }
        return verifyManifest(doc)
    }

    /** The checks of the device flow's step 2, in the reference client's order. */
    fun verifyManifest(doc: JsonValue, now: Instant = clock()): JsonObject {
        val payload = (doc as? JsonObject)?.get("payload") as? JsonObject
            ?: throw SyncException("manifest has no payload object")
        val signature = try {
            Base64.getDecoder().decode((doc["signature"] as? JsonString)?.value ?: "")
        } catch (e: IllegalArgumentException) {
            null
        }
        val message = Json.canonical(payload).toByteArray(Charsets.UTF_8)
        val ok = signature != null && signature.size == 64 && Ed25519Signer().run {
            init(false, publicKey); update(message, 0, message.size); verifySignature(signature)
        }
        if (!ok) throw SyncException("manifest signature does not verify with the server public key: refusing it")
        val cid = payload["catalog_id"]?.string
        if (cid != catalogId) throw SyncException("manifest is for catalog '$cid', not '$catalogId'")
        val expires = parseTime(payload["expires_at"], "expires_at")
        if (expires.isBefore(now)) {
            throw SyncException("manifest expired at ${payload["expires_at"]?.string}: a stale or replayed manifest; refusing it")
        }
        val vNode = payload["version"]
        val version = (vNode as? JsonNumber)?.takeIf { it.isInteger }?.text?.toLongOrNull()
        if (version == null || version < 1) throw SyncException("manifest version ${vNode?.let { Json.canonical(it) }} is not a positive integer")
        val cached = cachedVersion()
        if (cached != null && version < cached) {
            throw SyncException("manifest offers version $version, older than the cached version $cached: rollback refused")
        }
        val fp = payload["model_fingerprint"]?.string
        if (expectedFingerprint != null && fp != expectedFingerprint) {
            throw SyncException(
                "catalog '$catalogId' v$version was embedded by model $fp, but this device's embedder is " +
                    "$expectedFingerprint; update the app's models before syncing"
            )
        }
        return payload
    }

    /** A file whose size and sha256 are known, resuming a previous partial download. Returns (data, fetched). */
    private fun download(url: String, size: Long, sha256: String): Pair<ByteArray, Long> {
        if (!SHA_HEX.matches(sha256)) throw SyncException("manifest sha256 '$sha256' is not 64 hex digits")
        val downloads = File(dir, "downloads").apply { mkdirs() }
        val part = File(downloads, "$sha256.part")
        var have = if (part.exists()) part.length() else 0L
        if (have > size) { part.delete(); have = 0 }
        var fetched = 0L
        if (have < size) {
            val headers = if (have > 0) mapOf("Range" to "bytes=$have-", "If-Range" to "\"$sha256\"") else emptyMap()
            request(url, headers).use { resp ->
                val append = resp.status == 206 && have > 0
                if (!append) have = 0
                FileOutputStream(part, append).use { out ->
                    val buf = ByteArray(CHUNK)
                    try {
                        while (true) {
                            val n = resp.body.read(buf)
                            if (n < 0) break
                            fetched += n
                            if (have + fetched > size) throw SyncException("$url: server sent more than the manifest's $size bytes")
                            out.write(buf, 0, n)
                        }
                    } catch (e: IOException) {
                        // keep what arrived: the next sync resumes from here with a Range request
                        throw SyncException("$url: download interrupted after ${have + fetched} bytes (${e.message})", e)
                    }
                }
            }
            if (have + fetched < size) {
                throw SyncException("$url: download interrupted after ${have + fetched} of $size bytes; the next sync resumes")
            }
        }
        val data = part.readBytes()
        if (data.size.toLong() != size || PackBytes.hex(PackBytes.sha256(data)) != sha256) {
            part.delete()
            throw SyncException("$url: downloaded file does not match the manifest's sha256 (tampered or corrupt)")
        }
        return data to fetched
    }

    private fun checkPack(pack: Pack, payload: JsonObject) {
        val problems = ArrayList<String>()
        if (pack.catalogId != catalogId) problems.add("catalog '${pack.catalogId}'")
        if (pack.catalogVersion != payload["version"]?.long) problems.add("version ${pack.catalogVersion}")
        if (pack.modelFingerprint != payload["model_fingerprint"]?.string) problems.add("fingerprint ${pack.modelFingerprint}")
        if (problems.isNotEmpty()) throw SyncException("pack does not match its manifest (${problems.joinToString(", ")}); refusing it")
    }

    private fun tryDelta(payload: JsonObject, state: JsonObject): Pair<ByteArray, Long>? {
        val delta = payload["delta"] as? JsonObject ?: return null
        if (!useDelta || delta["from_version"]?.long == null || delta["from_version"]?.long != state["version"]?.long) return null
        val got = download(delta["url"]!!.string!!, delta["size"]!!.long!!, delta["sha256"]!!.string!!)
        val packBytes = try {
            val base = PackReader.read(packFile)
            val pack = Delta.apply(base, got.first)
            checkPack(pack, payload)
            pack.toBytes()
        } catch (e: PackException) {
            log.warning("delta v${delta["from_version"]?.long} -> v${payload["version"]?.long} did not apply (${e.message}); downloading the full pack")
            return null
        } catch (e: SyncException) {
            log.warning("delta did not apply (${e.message}); downloading the full pack")
            return null
        }
        if (PackBytes.hex(PackBytes.sha256(packBytes)) != payload["pack"]?.get("sha256")?.string) {
            log.warning("pack rebuilt from the delta differs from the published pack; downloading the full pack")
            return null
        }
        return packBytes to got.second
    }

    /** Bring the cache to the server's newest version. Throws [SyncException]; the cache survives it. */
    fun sync(): SyncResult {
        val payload = fetchManifest()
        val version = payload["version"]!!.long!!
        val packInfo = payload["pack"] as? JsonObject ?: throw SyncException("manifest has no pack object")
        val packSha = packInfo["sha256"]?.string ?: throw SyncException("manifest pack has no sha256")
        val state = cachedState()
        val intact = cacheIntact(state)
        if (state != null && !intact) {
            log.warning("cached pack $packFile of catalog $catalogId is corrupt; downloading the full pack again")
        }
        if (intact && state!!["version"]?.long == version && state["sha256"]?.string == packSha) {
            return SyncResult(version, false, "cache", packFile, 0)
        }
        var got = if (state != null && intact) tryDelta(payload, state) else null
        var via = "delta"
        if (got == null) {
            via = if (state == null || intact) "full" else "repair"
            val url = packInfo["url"]?.string ?: throw SyncException("manifest pack has no url")
            val size = packInfo["size"]?.long ?: throw SyncException("manifest pack has no size")
            got = download(url, size, packSha)
            try {
                checkPack(PackReader.read(got.first), payload)
            } catch (e: PackException) {
                throw SyncException("downloaded pack is not a valid pack (${e.message}); keeping the cached one", e)
            }
        }
        dir.mkdirs()
        // pack first, then the state that names it: a crash between the two leaves a pack newer than its state,
        // which the next sync simply replaces (its hash no longer matches the state)
        writeAtomic(packFile, got.first)
        val newState = JsonObject(linkedMapOf(
            "version" to JsonNumber(version.toString()),
            "sha256" to JsonString(packSha),
            "model_fingerprint" to (payload["model_fingerprint"] ?: org.coinvision.sdk.JsonNull),
            "manifest" to payload,
            "synced_at" to JsonString(OffsetDateTime.now(ZoneOffset.UTC).withNano(0).toString()),
        ))
        writeAtomic(stateFile, StringBuilder().also { Json.write(newState, it, sortKeys = false) }.toString().toByteArray(Charsets.UTF_8))
        File(dir, "downloads").listFiles { f -> f.name.endsWith(".part") }?.forEach { it.delete() }
        log.info("catalog $catalogId synced to v$version via $via (${got.second} bytes)")
        return SyncResult(version, true, via, packFile, got.second)
    }

    companion object {
        private val log = Logger.getLogger(SyncClient::class.java.name)
        private const val CHUNK = 256 * 1024
        private val SHA_HEX = Regex("[0-9a-f]{64}")

        /** The server's public key: base64 of the 32 raw bytes (`coinvision keys public`) or a PEM block. */
        fun loadPublicKey(key: String): Ed25519PublicKeyParameters {
            val text = key.trim()
            try {
                val raw = if (text.startsWith("-----BEGIN")) {
                    val der = Base64.getMimeDecoder().decode(text.lines().filter { !it.startsWith("-----") }.joinToString(""))
                    // SubjectPublicKeyInfo of Ed25519: 12 bytes of algorithm prefix, then the 32-byte key
                    if (der.size != 44) throw IllegalArgumentException("PEM is not an Ed25519 public key")
                    der.copyOfRange(12, 44)
                } else {
                    Base64.getDecoder().decode(text)
                }
                if (raw.size != 32) throw IllegalArgumentException("an Ed25519 public key has 32 bytes, got ${raw.size}")
                return Ed25519PublicKeyParameters(raw, 0)
            } catch (e: IllegalArgumentException) {
                throw SyncException("server public key is not valid (${e.message}); use the output of `coinvision keys public`", e)
            }
        }

        internal fun parseTime(value: JsonValue?, name: String): Instant {
            val text = value?.string ?: throw SyncException("manifest field $name is missing")
            return try {
                OffsetDateTime.parse(text.replace("Z", "+00:00")).toInstant()
            } catch (e: DateTimeParseException) {
                try {
                    LocalDateTime.parse(text).toInstant(ZoneOffset.UTC) // naive times are UTC, as in the reference
                } catch (e2: DateTimeParseException) {
                    throw SyncException("manifest field $name='$text' is not an ISO time")
                }
            }
        }

        /** Write to a temp file in the same folder and rename over [target]: never a torn file. */
        fun writeAtomic(target: File, data: ByteArray) {
            target.parentFile?.mkdirs()
            val tmp = File(target.parentFile, ".${target.name}.${System.nanoTime()}.tmp")
            try {
                FileOutputStream(tmp).use { it.write(data); it.fd.sync() }
                try {
                    Files.move(tmp.toPath(), target.toPath(), StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING)
                } catch (e: java.nio.file.AtomicMoveNotSupportedException) {
                    Files.move(tmp.toPath(), target.toPath(), StandardCopyOption.REPLACE_EXISTING)
                }
            } catch (e: IOException) {
                tmp.delete()
                throw SyncException("cannot write $target (${e.message}); check free space and permissions", e)
            }
        }
    }
}
