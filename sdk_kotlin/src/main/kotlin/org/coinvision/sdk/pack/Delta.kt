package org.coinvision.sdk.pack

import org.coinvision.sdk.PackDeltaException
import org.coinvision.sdk.PackException
import org.coinvision.sdk.PackFingerprintException
import org.coinvision.sdk.PackFormatException
import java.io.File

/** A parsed delta (docs/PACK_FORMAT.md section 4): what changed from [baseVersion] to [newVersion]. */
class Delta internal constructor(
    val catalogId: String,
    val modelFingerprint: String,
    val quant: Quant,
    val dim: Int,
    val baseVersion: Long,
    val newVersion: Long,
    val newCreatedAt: Long,
    val baseSha256: String,
    val newSha256: String,
    val removed: List<String>,
    val upserts: List<CoinRecord>,
    internal val section: VectorSection,
) {
    companion object {
        fun read(file: File): Delta = read(PackBytes.readSource(file, "delta"), "delta file $file")

        fun read(bytes: ByteArray, name: String = "delta"): Delta = try {
            parse(bytes, name)
        } catch (e: PackException) {
            throw e
        } catch (e: RuntimeException) {
            throw PackFormatException("$name: malformed (${e.javaClass.simpleName}: ${e.message}); download it again", e)
        }

        private fun parse(buf: ByteArray, name: String): Delta {
            PackBytes.checkEnvelope(buf, PackBytes.DELTA_MAGIC, "delta", name)
            val quant = PackBytes.decodeHeaderCodes(buf, 44, name)
            // ivfpq codebooks are trained per pack, so an ivfpq catalog ships whole (spec section 8)
            if (quant == Quant.IVFPQ) {
                throw PackFormatException(
                    "$name: declares ivfpq vectors, which deltas never carry (ivfpq packs ship whole); download the full pack"
                )
            }
            val dim = PackBytes.u16(buf, 8)
            val n = PackBytes.u32(buf, 12)
            val nUpserts = PackBytes.u32(buf, 16)
            val nRemoved = PackBytes.u32(buf, 20)
            val createdAt = PackBytes.i64(buf, 24)
            val tableBytes = PackBytes.u32(buf, 32)
            val baseVersion = PackBytes.u32(buf, 36)
            val newVersion = PackBytes.u32(buf, 40)
            val vb = PackBytes.vectorBytes(n, dim, quant)
            val expected = PackBytes.HEADER_BYTES + vb + tableBytes + PackBytes.CHECKSUM_BYTES
            PackBytes.checkLengthAndChecksum(buf, expected, name)
            if (nUpserts > n || nUpserts * PackBytes.MIN_RECORD_BYTES + nRemoved * 2 + 4 + 2 * PackBytes.CHECKSUM_BYTES > tableBytes) {
                throw PackFormatException("$name: header counts do not fit its table; download it again")
            }
            if (newVersion <= baseVersion) {
                throw PackFormatException("$name: goes from v$baseVersion to v$newVersion, not forward; download it again")
            }
            val section = PackBytes.readVectors(buf, n.toInt(), dim, quant)
            val cur = Cursor(buf, (PackBytes.HEADER_BYTES + vb).toInt(), (expected - PackBytes.CHECKSUM_BYTES).toInt(), "$name table")
            val catalogId = cur.text("catalog id")
            val fingerprint = cur.text("model fingerprint")
            val baseSha = PackBytes.hex(cur.bytes(PackBytes.CHECKSUM_BYTES, "base sha256"))
            val newSha = PackBytes.hex(cur.bytes(PackBytes.CHECKSUM_BYTES, "new sha256"))
            val removed = List(nRemoved.toInt()) { cur.text("removed coin id") }
            val upserts = List(nUpserts.toInt()) { cur.record() }
            cur.finish()
            if (catalogId.isEmpty() || fingerprint.isEmpty()) {
                throw PackFormatException("$name: empty catalog id or model fingerprint; download it again")
            }
            if (!strictlySorted(removed) || removed.contains("")) {
                throw PackFormatException("$name: removed coin ids are not sorted, unique and non-empty; download it again")
            }
            val upIds = upserts.map { it.coinId }
            if (!strictlySorted(upIds) || upIds.any { it in removed.toSet() }) {
                throw PackFormatException("$name: changed coins are not sorted and unique, or also removed; download it again")
            }
            PackBytes.arrayProblem(section, nUpserts.toInt(), dim, quant)?.let {
                throw PackFormatException("$name: $it; download it again")
            }
            return Delta(catalogId, fingerprint, quant, dim, baseVersion, newVersion, createdAt, baseSha, newSha,
                removed, upserts, section)
        }

        private fun strictlySorted(ids: List<String>): Boolean =
            (1 until ids.size).all { PackBytes.compareCodePoints(ids[it], ids[it - 1]) > 0 }

        /** The new pack: [base] with the delta applied; the base stays untouched on any failure. */
        fun apply(base: Pack, delta: ByteArray): Pack = apply(base, read(delta))

        fun apply(base: Pack, d: Delta): Pack {
            if (base.quant == Quant.IVFPQ) {
                throw PackDeltaException(
                    "pack '${base.catalogId}' is ivfpq: its versions ship as full packs, not deltas (its codebooks are " +
                        "trained per version); download the full pack"
                )
            }
            if (d.catalogId != base.catalogId) {
                throw PackDeltaException("delta is for catalog '${d.catalogId}', not '${base.catalogId}'; use that catalog's delta")
            }
            if (d.modelFingerprint != base.modelFingerprint) {
                throw PackFingerprintException(
                    "delta carries vectors of model ${d.modelFingerprint} but the base pack is from model " +
                        "${base.modelFingerprint}; download the full pack"
                )
            }
            if (d.baseVersion != base.catalogVersion) {
                throw PackDeltaException(
                    "delta goes from v${d.baseVersion} to v${d.newVersion} but the base pack is v${base.catalogVersion}; " +
                        "apply deltas in order or download the full pack"
                )
            }
            if (d.newVersion <= base.catalogVersion) {
                throw PackDeltaException("delta would move v${base.catalogVersion} to v${d.newVersion}: not forward")
            }
            if (d.quant != base.quant || d.dim != base.dim) {
                throw PackDeltaException(
                    "delta holds ${d.quant.label}/${d.dim}-d vectors but the base pack ${base.quant.label}/${base.dim}-d; " +
                        "download the full pack"
                )
            }
            if (base.sha256 != d.baseSha256) {
                throw PackDeltaException(
                    "base pack v${base.catalogVersion} differs from the one the delta was made from (sha256 " +
                        "${base.sha256.take(16)}… vs ${d.baseSha256.take(16)}…); download the full pack"
                )
            }
            return try {
                merge(base, d)
            } catch (e: PackException) {
                throw e
            } catch (e: RuntimeException) {
                throw PackDeltaException("delta does not apply (${e.javaClass.simpleName}: ${e.message}); download the full pack", e)
            }
        }

        private fun merge(base: Pack, d: Delta): Pack {
            val baseIds = base.records.map { it.coinId }
            val baseSet = baseIds.toSet()
            val missing = d.removed.filter { it !in baseSet }
            if (missing.isNotEmpty()) {
                throw PackDeltaException("delta removes coins ${missing.take(5)} that the base pack does not have; download the full pack")
            }
            val dropped = d.removed.toSet() + d.upserts.map { it.coinId }
            val recordsById = HashMap<String, CoinRecord>()
            d.upserts.forEach { recordsById[it.coinId] = it }
            base.records.filter { it.coinId !in dropped }.forEach { recordsById[it.coinId] = it }
            val coinOrder = recordsById.keys.sortedWith(PackBytes::compareCodePoints)
            val position = coinOrder.withIndex().associate { it.value to it.index }
            val w = base.quant.width * base.dim
            // rows: (new coin position, source section, row index); base rows first, then the delta's, stable-sorted
            data class Row(val coin: Int, val src: VectorSection, val idx: Int)
            val rows = ArrayList<Row>()
            for (i in 0 until base.vectorCount) {
                val cid = baseIds[base.section.coinIndex[i].toInt()]
                if (cid !in dropped) rows.add(Row(position.getValue(cid), base.section, i))
            }
            for (i in 0 until d.section.coinIndex.size) {
                rows.add(Row(position.getValue(d.upserts[d.section.coinIndex[i].toInt()].coinId), d.section, i))
            }
            val sorted = rows.sortedBy { it.coin } // stable: each coin's rows come from one source, in order
            val data = ByteArray(sorted.size * w)
            sorted.forEachIndexed { k, r -> System.arraycopy(r.src.data, r.idx * w, data, k * w, w) }
            val scales = if (base.quant == Quant.INT8) IntArray(sorted.size) { sorted[it].src.scaleBits!![sorted[it].idx] } else null
            val section = VectorSection(LongArray(sorted.size) { sorted[it].coin.toLong() }, scales, data)
            val pack = try {
                Pack(base.catalogId, d.newVersion, d.newCreatedAt, base.modelFingerprint, base.quant, base.dim, section,
                    coinOrder.map { recordsById.getValue(it) })
            } catch (e: PackFormatException) {
                throw PackDeltaException("delta v${d.baseVersion}->v${d.newVersion} yields an invalid pack (${e.message}); download the full pack", e)
            }
            if (pack.sha256 != d.newSha256) {
                throw PackDeltaException(
                    "pack rebuilt from delta v${d.baseVersion}->v${d.newVersion} does not match the published pack's sha256; " +
                        "download the full pack"
                )
            }
            return pack
        }
    }
}
