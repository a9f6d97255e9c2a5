package org.coinvision.sdk.sync

import org.bouncycastle.crypto.params.Ed25519PrivateKeyParameters
import org.bouncycastle.crypto.signers.Ed25519Signer
import org.bouncycastle.crypto.util.PrivateKeyFactory
import org.coinvision.sdk.Json
import org.coinvision.sdk.JsonNumber
import org.coinvision.sdk.JsonObject
import org.coinvision.sdk.JsonString
import org.coinvision.sdk.JsonValue
import org.coinvision.sdk.SyncException
import org.coinvision.sdk.TestPaths
import org.coinvision.sdk.pack.PackBytes
import org.junit.jupiter.api.AfterAll
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.BeforeAll
import org.junit.jupiter.api.MethodOrderer
import org.junit.jupiter.api.Order
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.TestInstance
import org.junit.jupiter.api.TestMethodOrder
import org.junit.jupiter.api.assertThrows
import java.io.File
import java.nio.file.Files
import java.time.Instant
import java.util.Base64

/**
 * Device sync against a real `coinvision serve` on loopback (release ONNX models, SQLite): the maintainer publishes
 * v1 and v2, the Kotlin client syncs (full, cache, delta, repair, resume) and refuses forged, tampered, expired,
 * rolled-back and other-model manifests with the cache untouched.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
@TestMethodOrder(MethodOrderer.OrderAnnotation::class)
class SyncClientLiveTest {
    private val tmp: File = Files.createTempDirectory("cv-sync").toFile()
    private lateinit var server: LiveServer
    private val catalog = "kt-euro"
    private val fingerprint = TestPaths.embedderMeta["fingerprint"]!!.string!!
    private val cache = File(tmp, "cache")
    private lateinit var v1: JsonValue
    private lateinit var v2: JsonValue

    private fun photos(cls: String, n: Int = 2) =
        File(TestPaths.samples, "coins211/images/$cls").listFiles()!!.sorted().take(n)

    private fun client(url: String = server.url, key: String = server.publicKey, dir: File = cache, fp: String? = fingerprint) =
        SyncClient(url, catalog, dir, key, token = server.deviceToken, expectedFingerprint = fp)

    @BeforeAll
    fun start() {
        server = LiveServer(File(tmp, "data"))
        val classes = File(TestPaths.samples, "coins211/images").listFiles()!!.map { it.name }.sorted()
        server.addCoin(catalog, "c-${classes[0]}", "coin ${classes[0]}", photos(classes[0]))
        server.addCoin(catalog, "c-${classes[1]}", "coin ${classes[1]}", photos(classes[1]))
        v1 = server.publish(catalog)
    }

    @AfterAll
    fun stop() {
        if (::server.isInitialized) server.close()
        tmp.deleteRecursively()
    }

    @Test @Order(1)
    fun `first sync downloads the full pack, verified, byte-identical to the server's`() {
        val c = client()
        val r = c.sync()
        assertEquals(1L, r.version)
        assertEquals("full", r.via)
        assertTrue(r.updated)
        assertArrayEquals(server.packBytes(catalog, 1), c.packFile.readBytes())
        val pack = c.loadPack()
        assertEquals(catalog, pack.catalogId)
        assertEquals(fingerprint, pack.modelFingerprint)
        assertEquals(2, pack.coinCount)
        val again = c.sync()
        assertEquals("cache", again.via)
        assertFalse(again.updated)
        assertEquals(0L, again.downloadedBytes)
    }

    @Test @Order(2)
    fun `after a second publish the device syncs by delta to the exact v2 pack`() {
        val classes = File(TestPaths.samples, "coins211/images").listFiles()!!.map { it.name }.sorted()
        server.addCoin(catalog, "c-${classes[2]}", "coin ${classes[2]}", photos(classes[2]))
        v2 = server.publish(catalog)
        val c = client()
        val r = c.sync()
        assertEquals(2L, r.version)
        assertEquals("delta", r.via)
        val served = server.packBytes(catalog, 2)
        assertArrayEquals(served, c.packFile.readBytes())
        assertTrue(r.downloadedBytes < served.size, "a delta is smaller than the pack")
        assertEquals(3, c.loadPack().coinCount)
        // the synced pack (embedded by the server with ONNX Runtime) recognizes the new coin's reference photo
        org.coinvision.sdk.Recognizer.fromDir(TestPaths.models).use { rec ->
            rec.loadPack(c.loadPack())
            val r = rec.recognize(photos(classes[2]).first().readBytes(), 3)
            assertEquals("c-${classes[2]}", r.best!!.coinId)
            assertEquals(1.0, r.best!!.score, 0.01)
            assertFalse(r.unknown)
        }
    }

    private fun manifestDoc(): JsonObject {
        val (s, b) = server.request("GET", "/v1/catalogs/$catalog/manifest", null, token = server.deviceToken)
        assertEquals(200, s)
        return Json.parse(b.toString(Charsets.UTF_8)) as JsonObject
    }

    private fun signed(payload: JsonObject): JsonObject {
        val pem = File(server.dataDir, "signing_key.pem").readText()
        val der = Base64.getMimeDecoder().decode(pem.lines().filter { !it.startsWith("-----") }.joinToString(""))
        val key = PrivateKeyFactory.createKey(der) as Ed25519PrivateKeyParameters
        val msg = Json.canonical(payload).toByteArray(Charsets.UTF_8)
        val sig = Ed25519Signer().run { init(true, key); update(msg, 0, msg.size); generateSignature() }
        return JsonObject(mapOf("payload" to payload, "signature" to JsonString(Base64.getEncoder().encodeToString(sig))))
    }

    private fun with(payload: JsonObject, key: String, value: JsonValue) = JsonObject(payload.map + (key to value))

    @Test @Order(3)
    fun `forged, tampered, expired, rolled-back and other-model manifests are refused`() {
        val c = client()
        val doc = manifestDoc()
        val payload = doc["payload"] as JsonObject
        val sha = PackBytes.hex(PackBytes.sha256(c.packFile.readBytes()))
        c.verifyManifest(doc) // the real one verifies
        c.verifyManifest(signed(payload)) // and so does our re-signing of it: the canonical JSON is the server's
        val tampered = JsonObject(doc.map + ("payload" to with(payload, "version", JsonNumber("3"))))
        assertTrue("signature" in assertThrows<SyncException> { c.verifyManifest(tampered) }.message!!)
        val rollback = signed(with(payload, "version", JsonNumber("1")))
        assertTrue("rollback" in assertThrows<SyncException> { c.verifyManifest(rollback) }.message!!)
        val expired = signed(with(payload, "expires_at", JsonString("2020-01-01T00:00:00Z")))
        assertTrue("expired" in assertThrows<SyncException> { c.verifyManifest(expired) }.message!!)
        val later = Instant.now().plusSeconds(8 * 24 * 3600L) // the server's manifests live 7 days
        assertThrows<SyncException> { c.verifyManifest(doc, later) }
        val other = signed(with(payload, "catalog_id", JsonString("other")))
        assertThrows<SyncException> { c.verifyManifest(other) }
        // a device whose embedder is another model refuses to sync, with both fingerprints named
        val e = assertThrows<SyncException> { client(fp = "0000000000000000").sync() }
        assertTrue(fingerprint in e.message!! && "0000000000000000" in e.message!!, e.message)
        // an impostor's key: the real server's manifest does not verify
        val otherKey = Ed25519PrivateKeyParameters(java.security.SecureRandom())
        val impostor = Base64.getEncoder().encodeToString(otherKey.generatePublicKey().encoded)
        assertTrue("signature" in assertThrows<SyncException> { client(key = impostor).sync() }.message!!)
        assertThrows<SyncException> { client(key = "not a key") }
        // the cache is untouched by every refusal
        assertEquals(sha, PackBytes.hex(PackBytes.sha256(c.packFile.readBytes())))
        assertEquals(2L, c.cachedVersion())
    }

    @Test @Order(4)
    fun `a pack corrupted on the device is refused offline and repaired by the next sync`() {
        val c = client()
        val good = c.packFile.readBytes()
        val bad = good.copyOf().also { it[100] = (it[100] + 1).toByte() }
        c.packFile.writeBytes(bad)
        assertThrows<SyncException> { c.loadPack() }
        val r = c.sync()
        assertEquals("repair", r.via)
        assertArrayEquals(good, c.packFile.readBytes())
    }

    @Test @Order(5)
    fun `an interrupted download resumes with a Range request`() {
        val dir = File(tmp, "cache-resume")
        val c = client(dir = dir)
        val full = server.packBytes(catalog, 2)
        val sha = PackBytes.hex(PackBytes.sha256(full))
        val part = File(dir, "$catalog/downloads/$sha.part").apply { parentFile.mkdirs() }
        part.writeBytes(full.copyOfRange(0, full.size / 2))
        val r = c.sync()
        assertEquals("full", r.via)
        assertEquals((full.size - full.size / 2).toLong(), r.downloadedBytes, "only the missing half was fetched")
        assertArrayEquals(full, c.packFile.readBytes())
        assertTrue(File(dir, "$catalog/downloads").listFiles()!!.isEmpty())
    }

    @Test @Order(6)
    fun `with the server gone, sync fails cleanly and the cached pack still loads`() {
        server.stop()
        val c = client()
        val e = assertThrows<SyncException> { c.sync() }
        assertTrue("cannot reach" in e.message!!, e.message)
        assertEquals(3, c.loadPack().coinCount)
        assertThrows<SyncException> { client(dir = File(tmp, "empty")).loadPack() }
    }
}
