package org.coinvision.sdk.image

import org.coinvision.sdk.ImageException
import java.io.ByteArrayInputStream
import java.io.IOException
import java.awt.image.BufferedImage
import javax.imageio.ImageIO

/**
 * Photo bytes → `H×W×3` RGB (spec step 0). The platform part of decoding: [ImageIoDecoder] on the JVM; on Android
 * an implementation over `BitmapFactory` (+ [Exif.orientation]) plugs in the same way.
 */
fun interface ImageDecoder {
    fun decode(bytes: ByteArray): RgbImage
}

/** EXIF orientation (tag 0x0112 of IFD0 in a JPEG's APP1 segment) and the transform Pillow's `exif_transpose` applies. */
object Exif {
    fun orientation(jpeg: ByteArray): Int {
        try {
            if (jpeg.size < 4 || (jpeg[0].toInt() and 0xff) != 0xFF || (jpeg[1].toInt() and 0xff) != 0xD8) return 1
            var p = 2
            while (p + 4 <= jpeg.size && (jpeg[p].toInt() and 0xff) == 0xFF) {
                val marker = jpeg[p + 1].toInt() and 0xff
                val len = ((jpeg[p + 2].toInt() and 0xff) shl 8) or (jpeg[p + 3].toInt() and 0xff)
                if (marker == 0xDA || marker == 0xD9) return 1
                if (marker == 0xE1 && p + 10 <= jpeg.size && String(jpeg, p + 4, 4, Charsets.US_ASCII) == "Exif") {
                    val t = p + 10
                    val le = jpeg[t].toInt() == 'I'.code
                    fun u16(o: Int) = if (le) (jpeg[t + o].toInt() and 0xff) or ((jpeg[t + o + 1].toInt() and 0xff) shl 8)
                    else ((jpeg[t + o].toInt() and 0xff) shl 8) or (jpeg[t + o + 1].toInt() and 0xff)
                    fun u32(o: Int) = if (le) u16(o).toLong() or (u16(o + 2).toLong() shl 16) else (u16(o).toLong() shl 16) or u16(o + 2).toLong()
                    val ifd = u32(4).toInt()
                    val n = u16(ifd)
                    for (i in 0 until n) {
                        val e = ifd + 2 + 12 * i
                        if (u16(e) == 0x0112) return u16(e + 8).takeIf { it in 1..8 } ?: 1
                    }
                    return 1
                }
                p += 2 + len
            }
        } catch (e: IndexOutOfBoundsException) {
            return 1 // a broken EXIF block: decode the pixels as stored
        }
        return 1
    }

    /** Apply orientation 1..8 so the image is upright (Pillow's `ImageOps.exif_transpose`). */
    fun transpose(img: RgbImage, orientation: Int): RgbImage {
        fun flipH(i: RgbImage): RgbImage {
            val out = ByteArray(i.data.size)
            for (y in 0 until i.height) for (x in 0 until i.width) System.arraycopy(i.data, (y * i.width + x) * 3, out, (y * i.width + i.width - 1 - x) * 3, 3)
            return RgbImage(i.width, i.height, out)
        }
        fun transposeDiag(i: RgbImage): RgbImage { // out(x, y) = in(y, x)
            val out = ByteArray(i.data.size)
            for (y in 0 until i.height) for (x in 0 until i.width) System.arraycopy(i.data, (y * i.width + x) * 3, out, (x * i.height + y) * 3, 3)
            return RgbImage(i.height, i.width, out)
        }
        return when (orientation) {
            2 -> flipH(img)
            3 -> ImageOps.rot90(img, 2)
            4 -> ImageOps.rot90(flipH(img), 2)
            5 -> transposeDiag(img)
            6 -> ImageOps.rot90(img, 3) // Pillow ROTATE_270 (clockwise quarter turn)
            7 -> ImageOps.rot90(transposeDiag(img), 2)
            8 -> ImageOps.rot90(img, 1)
            else -> img
        }
    }
}

/**
 * `javax.imageio` decoding (JPEG, PNG, BMP; JVM only) with EXIF orientation, transparency composited on white and
 * the 64 MP / 2048 px limits of the reference. JPEG pixels differ from Pillow's (libjpeg-turbo) by a few levels:
 * see the conformance test for the measured difference.
 */
class ImageIoDecoder(private val maxPixels: Long = 64_000_000, private val maxSide: Int = 2048) : ImageDecoder {
    override fun decode(bytes: ByteArray): RgbImage {
        if (bytes.isEmpty()) throw ImageException("image: empty input (0 bytes); pass the bytes of a JPEG/PNG photo")
        val stream = ImageIO.createImageInputStream(ByteArrayInputStream(bytes))
        val reader = ImageIO.getImageReaders(stream).asSequence().firstOrNull()
            ?: throw ImageException("image: not a readable image (JPEG, PNG, BMP are supported here)")
        val warnings = ArrayList<String>()
        val bi: BufferedImage = try {
            reader.input = stream
            reader.addIIOReadWarningListener { _, w -> warnings.add(w) } // e.g. "Premature end of JPEG file"
            val w = reader.getWidth(0).toLong(); val h = reader.getHeight(0).toLong()
            if (w * h > maxPixels) {
                throw ImageException("image: ${w}x$h is ${w * h / 1_000_000} MP, above the ${maxPixels / 1_000_000} MP limit; downscale the photo first")
            }
            reader.read(0).also {
                if (warnings.isNotEmpty()) throw ImageException("image: image is truncated or corrupt (${warnings.first()}); re-export the photo")
            }
        } catch (e: IOException) {
            throw ImageException("image: image is truncated or corrupt (${e.message}); re-export the photo", e)
        } catch (e: RuntimeException) {
            if (e is ImageException) throw e
            throw ImageException("image: cannot decode (${e.javaClass.simpleName}: ${e.message}); re-export the photo", e)
        } finally {
            reader.dispose()
        }
        val w = bi.width; val h = bi.height
        val argb = bi.getRGB(0, 0, w, h, null, 0, w)
        val out = ByteArray(w * h * 3)
        val alpha = bi.colorModel.hasAlpha()
        for (i in 0 until w * h) {
            val p = argb[i]
            var r = (p ushr 16) and 0xff; var g = (p ushr 8) and 0xff; var b = p and 0xff
            if (alpha) { // transparent pixels become white, as a photo app shows them
                val a = (p ushr 24) and 0xff
                r = (r * a + 255 * (255 - a) + 127) / 255; g = (g * a + 255 * (255 - a) + 127) / 255; b = (b * a + 255 * (255 - a) + 127) / 255
            }
            out[i * 3] = r.toByte(); out[i * 3 + 1] = g.toByte(); out[i * 3 + 2] = b.toByte()
        }
        var img = Exif.transpose(RgbImage(w, h, out), Exif.orientation(bytes))
        if (maxOf(img.width, img.height) > maxSide) { // bilinear downscale to the working size
            val s = maxSide.toDouble() / maxOf(img.width, img.height)
            val nw = maxOf(1, Math.rint(img.width * s).toInt()); val nh = maxOf(1, Math.rint(img.height * s).toInt())
            img = RgbImage(nw, nh, ImageOps.resizeAreaU8(img.data, img.width, img.height, 3, nw, nh))
        }
        return img
    }
}
