"""Execute .tflite artifacts with the LiteRT Interpreter (XNNPACK on the CPU, as on Android)."""
from __future__ import annotations

import numpy as np

from runtimes.artifact import Artifact
from runtimes.errors import RuntimeArtifactError
from runtimes.tflite.interpreter import make_interpreter


def quantize_input(x: np.ndarray, dtype: np.dtype, scale: float, zero_point: int) -> np.ndarray:
    """float → the model's integer input, q = clip(round(x / s) + zp) (round half to even, like LiteRT)."""
    info = np.iinfo(dtype)
    return np.clip(np.rint(x / np.float32(scale)) + zero_point, info.min, info.max).astype(dtype)


class TfliteRunner:
    """One Interpreter; float in, float logits out, whatever the model's I/O dtypes.

    Full-integer models take int8/int16 inputs: the runner applies the input tensor's (scale, zero point)
    to the whole batch at once and dequantises the outputs the same way. litert-torch fixes the batch
    at export, so a batch of N is N invocations of the batch-1 graph.
    """

    def __init__(self, artifact: Artifact, threads: int = 1, delegates: bool = True):
        self.interpreter = make_interpreter(artifact.entry, threads=threads, delegates=delegates)
        self.threads = threads
        ins, outs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(ins) != 1 or len(outs) != 1:
            raise RuntimeArtifactError(f"{artifact.entry}: expected one input and one output, "
                                       f"found {len(ins)} and {len(outs)}")
        self._in, self._out = ins[0], outs[0]
        self.input_name, self.output_name = self._in["name"], self._out["name"]
        self.input_shape = tuple(int(d) for d in self._in["shape"])

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        per_call = self.input_shape[0]
        if x.shape[1:] != self.input_shape[1:] or len(x) % per_call:
            raise RuntimeArtifactError(f"input of shape {x.shape} does not fit the model's {self.input_shape}")
        dtype = np.dtype(self._in["dtype"])
        if dtype.kind in "iu":
            scale, zp = self._in["quantization"]
            x = quantize_input(x, dtype, scale, zp)
        it, i_in, i_out = self.interpreter, self._in["index"], self._out["index"]
        outs = []
        for start in range(0, len(x), per_call):
            it.set_tensor(i_in, x[start:start + per_call])
            it.invoke()
            outs.append(it.get_tensor(i_out).copy())
        y = np.concatenate(outs)
        if y.dtype.kind in "iu":
            scale, zp = self._out["quantization"]
            y = (y.astype(np.float32) - np.float32(zp)) * np.float32(scale)
        return y.astype(np.float32, copy=False)
