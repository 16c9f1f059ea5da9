"""A session that returns a graph's intermediate tensors: the float values calibration and matching read."""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from runtimes.onnx.session import cpu_session


def probe_session(m: onnx.ModelProto, tensors: list[str]):
    """onnxruntime CPU session of `m` whose outputs are exactly `tensors` (float), with no graph rewrites,
    so every named tensor still exists and holds the value the unoptimised graph computes."""
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in tensors)
    return cpu_session(probe.SerializeToString(), threads=1, optimization="none")
