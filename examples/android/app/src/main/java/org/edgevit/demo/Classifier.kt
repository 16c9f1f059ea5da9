package org.edgevit.demo

import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtSession
import org.tensorflow.lite.Interpreter
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.FloatBuffer

/** One model, one call: float tensor in, logits out. Built from the artifact's runtime field. */
interface Classifier : AutoCloseable {
    fun logits(x: FloatArray): FloatArray

    companion object {
        fun open(model: ByteBuffer, m: ArtifactManifest, threads: Int = 2): Classifier =
            if (m.runtime == "tflite") LiteRtClassifier(model, threads) else OrtClassifier(model, m, threads)
    }
}

class LiteRtClassifier(model: ByteBuffer, threads: Int) : Classifier {
    private val interpreter = Interpreter(model, Interpreter.Options().setNumThreads(threads))
    private val classes = interpreter.getOutputTensor(0).shape().last()

    override fun logits(x: FloatArray): FloatArray {
        val input = ByteBuffer.allocateDirect(4 * x.size).order(ByteOrder.nativeOrder())
        input.asFloatBuffer().put(x)
        val out = Array(1) { FloatArray(classes) }
        interpreter.run(input, out)
        return out[0]
    }

    override fun close() = interpreter.close()
}

class OrtClassifier(model: ByteBuffer, private val m: ArtifactManifest, threads: Int) : Classifier {
    private val env = OrtEnvironment.getEnvironment()
    private val session: OrtSession = env.createSession(
        ByteArray(model.remaining()).also { model.duplicate().get(it) },
        OrtSession.SessionOptions().apply { setIntraOpNumThreads(threads) })
    private val shape = longArrayOf(1, *m.inputShape.drop(1).map { it.toLong() }.toLongArray())

    override fun logits(x: FloatArray): FloatArray =
        OnnxTensor.createTensor(env, FloatBuffer.wrap(x), shape).use { t ->
            session.run(mapOf(m.inputName to t)).use { r ->
                @Suppress("UNCHECKED_CAST")
                (r[0].value as Array<FloatArray>)[0]
            }
        }

    override fun close() = session.close()
}
