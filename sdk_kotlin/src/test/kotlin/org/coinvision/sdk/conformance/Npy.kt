package org.coinvision.sdk.conformance

import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder

/** A NumPy `.npy` file (little-endian, C order): dtype descr, shape and the raw data bytes. */
class Npy(val descr: String, val shape: IntArray, val data: ByteArray) {
    val size: Int get() = shape.fold(1) { a, b -> a * b }

    fun floats(): FloatArray {
        require(descr == "<f4") { "dtype $descr is not float32" }
        val fb = ByteBuffer.wrap(data).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer()
        return FloatArray(fb.remaining()).also { fb.get(it) }
    }

    companion object {
        fun read(file: File): Npy {
            val b = file.readBytes()
            require(b[0] == 0x93.toByte() && String(b, 1, 5, Charsets.US_ASCII) == "NUMPY") { "$file is not a .npy file" }
            val major = b[6].toInt()
            val (hlen, start) = if (major == 1) ((b[8].toInt() and 0xff) or ((b[9].toInt() and 0xff) shl 8)) to 10
            else (ByteBuffer.wrap(b, 8, 4).order(ByteOrder.LITTLE_ENDIAN).int) to 12
            val header = String(b, start, hlen, Charsets.US_ASCII)
            val descr = Regex("'descr': *'([^']+)'").find(header)!!.groupValues[1]
            require(!header.contains("'fortran_order': True")) { "$file is Fortran-ordered" }
            val shape = Regex("'shape': *\\(([^)]*)\\)").find(header)!!.groupValues[1]
                .split(',').map { it.trim() }.filter { it.isNotEmpty() }.map { it.toInt() }.toIntArray()
            return Npy(descr, shape, b.copyOfRange(start + hlen, b.size))
        }

        /** `np.packbits` bool mask (MSB first) → BooleanArray of [n] values. */
        fun unpackBits(data: ByteArray, n: Int): BooleanArray = BooleanArray(n) { i -> (data[i / 8].toInt() shr (7 - i % 8)) and 1 == 1 }
    }
}
