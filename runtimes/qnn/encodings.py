"""AIMET-style encodings JSON (format 1.0.0) read off the QDQ graph, keyed by the float graph's tensor names.

Qualcomm's tools take a float ONNX plus an encodings file (qnn-onnx-converter / qairt-converter
`--quantization_overrides`, AI Hub's .aimet bundles), so the bundle ships both; the encodings are
read back from the QDQ graph we actually run, never recomputed, so the two cannot drift apart.

Convention (AIMET): real = (u + offset) · scale with u the code read as unsigned, so
offset = −(zero_point + 2^(bw−1) if the storage is signed else zero_point); symmetric int8 → −128.
Biases are left out: QNN derives their int32 encoding from input and weight scales.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

VERSION = "1.0.0"
_SIGNED = {onnx.TensorProto.INT4: (True, 4), onnx.TensorProto.INT8: (True, 8), onnx.TensorProto.INT16: (True, 16),
           onnx.TensorProto.UINT4: (False, 4), onnx.TensorProto.UINT8: (False, 8),
           onnx.TensorProto.UINT16: (False, 16), onnx.TensorProto.INT32: (True, 32)}


def _entry(name: str, scale: np.ndarray, zp: np.ndarray, dtype: int) -> dict:
    signed, bw = _SIGNED[dtype]
    shift = 2 ** (bw - 1) if signed else 0
    scale = np.atleast_1d(scale).astype(np.float64)
    zp = np.broadcast_to(np.atleast_1d(zp).astype(np.int64), scale.shape)
    return {"name": name, "dtype": "INT", "enc_type": "PER_CHANNEL" if scale.size > 1 else "PER_TENSOR",
            "bw": bw, "is_sym": bool(np.all(zp == 0) and signed),
            "scale": [float(s) for s in scale], "offset": [int(o) for o in -(zp + shift)]}


def encodings_from_qdq(qdq_path: str | Path, float_path: str | Path) -> dict:
    """{version, activation_encodings, param_encodings}: one entry per float-graph tensor the QDQ graph quantises."""
    qdq = onnx.load(str(qdq_path))
    fg = onnx.load(str(float_path), load_external_data=False).graph
    float_tensors = {i.name for i in fg.initializer} | {v.name for v in fg.input} \
        | {o for n in fg.node for o in n.output}
    weights = {i.name for i in fg.initializer}
    inits = {i.name: i for i in qdq.graph.initializer}
    arr = {}

    def value(name: str) -> np.ndarray:
        if name not in arr:
            arr[name] = numpy_helper.to_array(inits[name])
        return arr[name]

    acts, params, seen = [], [], set()
    for node in qdq.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        src = node.input[0]
        if node.op_type == "DequantizeLinear" and src in inits:
            name = src[: -len("_quantized")] if src.endswith("_quantized") else src
            if name not in weights or name in seen or inits[src].data_type == onnx.TensorProto.INT32:
                continue
            seen.add(name)
            params.append(_entry(name, value(node.input[1]), value(node.input[2]), inits[src].data_type))
        elif node.op_type == "QuantizeLinear" and src in float_tensors and src not in seen:
            seen.add(src)
            acts.append(_entry(src, value(node.input[1]), value(node.input[2]), inits[node.input[2]].data_type))
    return {"version": VERSION, "activation_encodings": acts, "param_encodings": params, "excluded_layers": [],
            "quantizer_args": {"activation_bitwidth": max((a["bw"] for a in acts), default=None),
                               "param_bitwidth": max((p["bw"] for p in params), default=None),
                               "per_channel_quantization": any(p["enc_type"] == "PER_CHANNEL" for p in params),
                               "dtype": "int"}}


def write_encodings(qdq_path: str | Path, float_path: str | Path, out: str | Path) -> dict:
    enc = encodings_from_qdq(qdq_path, float_path)
    Path(out).write_text(json.dumps(enc, indent=1) + "\n")
    return enc
