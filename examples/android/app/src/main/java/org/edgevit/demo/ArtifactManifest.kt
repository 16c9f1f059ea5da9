package org.edgevit.demo

import org.json.JSONObject

/**
 * The parts of an edgevit artifact's manifest.json the app needs. The field list is
 * examples/android/manifest_fields.json; CI checks it against runtimes/manifest.schema.json, so a
 * change in the exporter that this parser would miss fails a test instead of a phone.
 */
data class ArtifactManifest(
    val runtime: String,
    val entry: String,
    val inputName: String,
    val inputShape: List<Int>,
    val size: Int,
    val channels: Int,
    val mean: FloatArray,
    val std: FloatArray,
    val pixelScale: Float,
    val layout: String,
    val labels: List<String>,
    val precision: String,
) {
    companion object {
        fun parse(text: String): ArtifactManifest {
            val m = JSONObject(text)
            val input = m.getJSONObject("input")
            val pre = m.getJSONObject("preprocess")
            val shape = input.getJSONArray("shape")
            val labels = m.getJSONArray("labels")
            val quant = m.optJSONObject("quant")           // null for float artifacts
            fun floats(key: String) = pre.getJSONArray(key).let { a -> FloatArray(a.length()) { a.getDouble(it).toFloat() } }
            val runtime = m.getString("runtime")
            require(runtime == "tflite" || runtime == "onnx") { "the app runs tflite and onnx artifacts, not $runtime" }
            return ArtifactManifest(
                runtime = runtime,
                entry = m.getString("entry"),
                inputName = input.getString("name"),
                // a dynamic batch is written as a string ("batch"): the app always runs batch 1
                inputShape = List(shape.length()) { i -> shape.optInt(i, 1) },
                size = pre.getInt("size"),
                channels = pre.getInt("channels"),
                mean = floats("mean"),
                std = floats("std"),
                pixelScale = pre.optDouble("pixel_scale", 1.0 / 255).toFloat(),
                layout = pre.optString("layout", "NCHW"),
                labels = List(labels.length()) { labels.getString(it) },
                precision = quant?.optString("precision", "fp32") ?: "fp32",
            )
        }
    }
}
