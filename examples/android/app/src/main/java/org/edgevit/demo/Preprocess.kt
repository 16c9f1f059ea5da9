package org.edgevit.demo

import android.graphics.Bitmap
import android.graphics.Color

/** Bitmap → the float tensor the artifact expects, exactly as runtimes/preprocess.py does it. */
object Preprocess {
    fun toTensor(src: Bitmap, m: ArtifactManifest): FloatArray {
        val bmp = Bitmap.createScaledBitmap(src, m.size, m.size, true)   // bilinear
        val px = IntArray(m.size * m.size)
        bmp.getPixels(px, 0, m.size, 0, 0, m.size, m.size)
        val plane = m.size * m.size
        val out = FloatArray(m.channels * plane)
        for (i in 0 until plane) {
            val c = px[i]
            val rgb = floatArrayOf(Color.red(c).toFloat(), Color.green(c).toFloat(), Color.blue(c).toFloat())
            val values = if (m.channels == 1) floatArrayOf(0.299f * rgb[0] + 0.587f * rgb[1] + 0.114f * rgb[2]) else rgb
            for (ch in 0 until m.channels) {
                val v = (values[ch] * m.pixelScale - m.mean[ch]) / m.std[ch]
                val idx = if (m.layout == "NCHW") ch * plane + i else i * m.channels + ch
                out[idx] = v
            }
        }
        return out
    }
}
