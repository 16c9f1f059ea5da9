"""Op-support checker: export to ONNX, infer shapes, and list every node that breaks a target's rules,
with the pass that fixes it; for `qnn-htp` also compile with the real QNN HTP compiler."""
from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from edgevit.rewrite.targets import Target
from runtimes.onnx.session import cpu_session

_DTYPE = {v: k.lower() for k, v in onnx.TensorProto.DataType.items()}
_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1, "uint8": 1, "int16": 2, "uint16": 2,
          "int32": 4, "uint32": 4, "int64": 8, "uint64": 8, "bool": 1, "double": 8}
_DTYPE["float"] = "float32"


@dataclass
class Violation:
    node: str
    op: str
    rule: str          # op | rank | dynamic | dtype | size
    detail: str
    fix: str           # the pass that removes it, or "-"


def export_for_check(model: nn.Module, input_shape: tuple[int, ...], path: Path) -> Path:
    """FP32 ONNX as `edgevit export` would write it: static if the model went through static-shape."""
    import warnings
    from runtimes.onnx import export_onnx
    static = getattr(model, "edgevit_static_shape", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return export_onnx(model, tuple(static or input_shape), path, dynamic_batch=static is None)


def _tensor_types(model: onnx.ModelProto) -> dict[str, tuple[str, list]]:
    """dtype and dims of every tensor: measured by onnxruntime when the input is static (exact, and
    custom-domain ops such as com.microsoft.Gelu don't stop it), else ONNX shape inference."""
    static = all(d.HasField("dim_value") for i in model.graph.input for d in i.type.tensor_type.shape.dim)
    if static:
        try:
            return _run_types(model)
        except Exception:  # noqa: BLE001 — fall back to symbolic inference
            pass
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim] \
            if t.HasField("shape") else None
        types[vi.name] = (_DTYPE.get(onnx.TensorProto.DataType.Name(t.elem_type).lower(),
                                     onnx.TensorProto.DataType.Name(t.elem_type).lower()), dims)
    return types


def _run_types(model: onnx.ModelProto) -> dict[str, tuple[str, list]]:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    known = {o.name for o in m.graph.output}
    for node in m.graph.node:
        for t in node.output:
            if t and t not in known:
                m.graph.output.append(onnx.ValueInfoProto(name=t))
                known.add(t)
    sess = cpu_session(m.SerializeToString(), optimization="none")
    feeds = {i.name: np.zeros([d.dim_value for d in i.type.tensor_type.shape.dim],
                              onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type))
             for i in m.graph.input if i.name not in {x.name for x in m.graph.initializer}}
    outs = sess.run(None, feeds)
    return {o.name: (str(v.dtype) if v.dtype != np.bool_ else "bool", list(v.shape))
            for o, v in zip(sess.get_outputs(), outs)}


def check_onnx(path: str | Path, target: Target) -> list[Violation]:
    """Every rule violation in the ONNX graph at `path` (initialisers are weights, not checked)."""
    model = onnx.load(str(path))
    types = _tensor_types(model)
    inits = {i.name for i in model.graph.initializer}
    out: list[Violation] = []
    for i, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        if node.op_type in ("Constant", "Identity"):   # no-ops every runtime removes
            continue
        if node.op_type not in target.ops:
            out.append(Violation(name, op, "op", f"{op} is not supported on {target.name}",
                                 target.fix_for(f"op:{node.op_type}")))
        for t in node.output:
            if t in inits or t not in types:
                continue
            dtype, dims = types[t]
            if dims is None:
                continue
            if len(dims) > target.max_rank:
                out.append(Violation(name, op, "rank", f"output {t} has rank {len(dims)} > {target.max_rank}",
                                     target.fix_for("rank")))
            if any(not isinstance(d, int) or d <= 0 for d in dims):
                out.append(Violation(name, op, "dynamic", f"output {t} has dynamic shape {dims}",
                                     target.fix_for("dynamic")))
            if dtype not in target.dtypes:
                out.append(Violation(name, op, "dtype", f"output {t} is {dtype}", target.fix_for(f"dtype:{dtype}")))
            static = [d for d in dims if isinstance(d, int) and d > 0]   # dynamic dims counted as 1
            if static:
                nbytes = int(np.prod(static, dtype=np.int64)) * _BYTES.get(dtype, 4)
                if target.max_tensor_bytes and nbytes > target.max_tensor_bytes:
                    out.append(Violation(name, op, "size", f"output {t} is {nbytes} B > {target.max_tensor_bytes} B",
                                         target.fix_for("size")))
                if target.max_dim and max(static, default=0) > target.max_dim:
                    out.append(Violation(name, op, "size", f"output {t} has a dim > {target.max_dim}",
                                         target.fix_for("size")))
    return out


def compile_qnn(path: str | Path, target: Target, calibration: np.ndarray) -> dict:
    """Quantise with onnxruntime's QNN recipe (U16 activations, U8 weights) and compile for HTP with CPU
    fallback disabled; returns the refused nodes (each with the pass that would fix its op)."""
    from runtimes.qnn import htp_placement, quantize_for_qnn
    import onnxruntime as ort
    ort.set_default_logger_severity(4)
    with tempfile.TemporaryDirectory() as tmp:
        qdq = quantize_for_qnn(path, Path(tmp) / "model.qdq.onnx", calibration)
        p = htp_placement(qdq)
    return {"compiler": "onnxruntime-qnn HTP (U16 activations, U8 weights)", "finalized": p.finalized,
            "nodes_on_htp": p.on_qnn, "host_boundary": p.boundary, "error": p.error,
            "refused": [asdict(Violation(n, op, "qnn", "refused by the QNN HTP compiler",
                                         target.fix_for(f"op:{op}"))) for n, op in p.refused
                        if op not in ("QuantizeLinear", "DequantizeLinear")],
            "refused_qdq": sum(op in ("QuantizeLinear", "DequantizeLinear") for _, op in p.refused)}


def check_model(model: nn.Module, input_shape: tuple[int, ...], target: Target,
                calibration: np.ndarray | None = None, compile: bool = True) -> dict:
    """Export `model` and check it; `calibration` (real inputs) enables the QNN compile for qnn-htp."""
    with tempfile.TemporaryDirectory() as tmp:
        path = export_for_check(model, input_shape, Path(tmp) / "model.onnx")
        return check_path(path, target, calibration, compile)


def check_path(path: str | Path, target: Target, calibration: np.ndarray | None = None, compile: bool = True) -> dict:
    violations = check_onnx(path, target)
    result = {"target": target.name, "violations": [asdict(v) for v in violations]}
    if compile and target.compiler == "qnn-htp" and calibration is not None:
        from runtimes.qnn import qnn_available
        if not qnn_available():
            result["qnn"] = {"skipped": "onnxruntime-qnn not installed (pip install 'edgevit[qnn]')"}
        elif any(v.rule == "dynamic" for v in violations):
            result["qnn"] = {"skipped": "dynamic shapes: QNN needs a static graph (run the static-shape pass)"}
        else:
            result["qnn"] = compile_qnn(path, target, calibration)
    return result


def total_violations(result: dict) -> int:
    qnn = result.get("qnn", {})
    return len(result["violations"]) + len(qnn.get("refused", [])) + (0 if qnn.get("finalized", True) else 1)
