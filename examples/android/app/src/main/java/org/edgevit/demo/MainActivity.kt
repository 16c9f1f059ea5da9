package org.edgevit.demo

import android.graphics.Bitmap
import android.graphics.ImageDecoder
import android.os.Bundle
import android.os.SystemClock
import androidx.activity.result.contract.ActivityResultContracts
import androidx.appcompat.app.AppCompatActivity
import org.edgevit.demo.databinding.ActivityMainBinding
import java.nio.ByteBuffer
import java.nio.ByteOrder
import kotlin.math.exp

/**
 * Gallery or camera image → top-5 labels with latency. The artifact directory (manifest.json + model)
 * is copied into app/src/main/assets/artifact/ before building; see the README.
 */
class MainActivity : AppCompatActivity() {
    private lateinit var ui: ActivityMainBinding
    private lateinit var manifest: ArtifactManifest
    private lateinit var classifier: Classifier

    private val pick = registerForActivityResult(ActivityResultContracts.GetContent()) { uri ->
        uri ?: return@registerForActivityResult
        val bmp = ImageDecoder.decodeBitmap(ImageDecoder.createSource(contentResolver, uri)) { d, _, _ ->
            d.allocator = ImageDecoder.ALLOCATOR_SOFTWARE
        }
        classify(bmp)
    }
    private val camera = registerForActivityResult(ActivityResultContracts.TakePicturePreview()) { bmp ->
        bmp?.let { classify(it) }
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        ui = ActivityMainBinding.inflate(layoutInflater)
        setContentView(ui.root)
        manifest = ArtifactManifest.parse(assets.open("artifact/manifest.json").bufferedReader().readText())
        val bytes = assets.open("artifact/${manifest.entry}").readBytes()
        val model = ByteBuffer.allocateDirect(bytes.size).order(ByteOrder.nativeOrder()).put(bytes).apply { rewind() }
        classifier = Classifier.open(model, manifest)
        ui.model.text = "${manifest.runtime} · ${manifest.precision} · ${manifest.size}×${manifest.size}×${manifest.channels}"
        ui.pick.setOnClickListener { pick.launch("image/*") }
        ui.camera.setOnClickListener { camera.launch(null) }
    }

    private fun classify(bmp: Bitmap) {
        ui.image.setImageBitmap(bmp)
        val x = Preprocess.toTensor(bmp, manifest)
        classifier.logits(x)                                  // warm-up: first call allocates
        val t0 = SystemClock.elapsedRealtimeNanos()
        val z = classifier.logits(x)
        val ms = (SystemClock.elapsedRealtimeNanos() - t0) / 1e6
        val max = z.max()
        val e = z.map { exp((it - max).toDouble()) }
        val sum = e.sum()
        val top = e.indices.sortedByDescending { e[it] }.take(5)
        ui.result.text = buildString {
            append("%.2f ms (%s)\n".format(ms, manifest.runtime))
            top.forEachIndexed { k, i ->
                append("%d. %-16s %.3f\n".format(k + 1, manifest.labels.getOrElse(i) { "class_$i" }, e[i] / sum))
            }
        }
    }

    override fun onDestroy() {
        classifier.close()
        super.onDestroy()
    }
}
