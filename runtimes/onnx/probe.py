"""A session that returns a graph's intermediate tensors: the float values calibration and matching read."""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper


def probe_session(m: onnx.ModelProto, tensors: list[str]):
    """onnxruntime CPU session of `m` whose outputs are exactly `tensors` (float), with no graph rewrites,
    so every named tensor still exists and holds the value the unoptimised graph computes."""
    import onnxruntime as ort
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in tensors)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
