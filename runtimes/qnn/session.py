"""onnxruntime-qnn sessions on the HTP backend, and which nodes the QNN compiler refuses.

The QNN compiler is the ground truth for "does this graph run on Hexagon": we quantise the graph with
onnxruntime's own QNN flow (`qnn_preprocess_model` + `get_qnn_qdq_config`, the recipe Qualcomm
documents for the EP), open a session on the HTP backend (emulated on x86) with CPU fallback
*allowed*, and read onnxruntime's record of which EP took each node: every node not on QNN is one
the compiler refused. A second session with fallback disabled confirms the whole graph finalises.
No edgevit imports: `runtimes` sits below `edgevit`.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

EP_NAME = "QNNExecutionProvider"
_REGISTERED = False


class QnnUnavailable(ValueError):
    """onnxruntime-qnn is not installed (extra `qnn`) or its HTP backend cannot be loaded."""


def qnn_available() -> bool:
    try:
        import onnxruntime_qnn  # noqa: F401
    except ImportError:
        return False
    return True


def _register():
    """Register the QNN plugin EP once per process; returns the HTP library path."""
    global _REGISTERED
    try:
        import onnxruntime as ort
        import onnxruntime_qnn
    except ImportError as e:
        raise QnnUnavailable("onnxruntime-qnn is not installed; pip install 'edgevit[qnn]'") from e
    if not _REGISTERED:
        try:
            ort.register_execution_provider_library(EP_NAME, onnxruntime_qnn.get_library_path())
        except Exception as e:  # noqa: BLE001 — already registered in this process is fine
            if "already" not in str(e).lower():
                raise QnnUnavailable(f"cannot register the QNN EP: {e}") from e
        _REGISTERED = True
    return onnxruntime_qnn.get_qnn_htp_path()


def htp_session(model_path: str | Path, allow_cpu_fallback: bool = False, record_assignment: bool = True):
    """An InferenceSession on the QNN HTP backend (x86 emulation here, the real chip on device)."""
    import onnxruntime as ort
    htp = _register()
    devices = [d for d in ort.get_ep_devices() if d.ep_name == EP_NAME]
    if not devices:
        raise QnnUnavailable("the QNN EP registered but exposes no device")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not allow_cpu_fallback:
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    if record_assignment:
        so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    so.add_provider_for_devices(devices[:1], {"backend_path": htp})
    return ort.InferenceSession(str(model_path), sess_options=so)


def quantize_for_qnn(model_path: str | Path, out_path: str | Path, calibration: np.ndarray,
                     activation_type: str = "uint16", weight_type: str = "uint8", preprocess: bool = False) -> Path:
    """QDQ-quantise an FP32 ONNX model with onnxruntime's QNN recipe (U8/U16 activations).

    `preprocess` runs `qnn_preprocess_model`, which fuses Erf-GELU / ReduceMean-LayerNorm patterns into
    single ops; off by default so the compiler judges the graph as exported, not a repaired copy.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config, qnn_preprocess_model
    types = {"uint8": QuantType.QUInt8, "uint16": QuantType.QUInt16, "int8": QuantType.QInt8}
    if activation_type not in types or weight_type not in types:
        raise ValueError(f"QNN activation/weight types are {sorted(types)}")
    import onnx
    name = onnx.load(str(model_path), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{name: calibration[i:i + 1].astype(np.float32)} for i in range(len(calibration))])

        def get_next(self):
            return next(self.it, None)

    out_path = Path(out_path)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        src = pre if preprocess and qnn_preprocess_model(str(model_path), str(pre)) else Path(model_path)
        cfg = get_qnn_qdq_config(str(src), Reader(), activation_type=types[activation_type],
                                 weight_type=types[weight_type])
        quantize(str(src), str(out_path), cfg)
    return out_path


@dataclass
class Placement:
    """Where the QNN HTP compiler put the nodes of a (QDQ) graph."""
    on_qnn: int = 0                                               # nodes QNN took (after ORT's fusions)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (node name, op type) left on CPU
    boundary: list[str] = field(default_factory=list)             # Q/DQ of graph inputs/outputs (host side)
    finalized: bool = False          # a session with CPU fallback disabled was created
    error: str = ""


def htp_placement(model_path: str | Path) -> Placement:
    """Compile `model_path` for HTP; list the nodes QNN refused (left to CPU) and whether it finalises.

    Node names come from onnxruntime's assignment record, i.e. after its graph optimisations; the
    quantise/dequantise of graph inputs and outputs stay on the host by design and are listed apart.
    """
    import onnx
    graph = onnx.load(str(model_path), load_external_data=False).graph
    io = {v.name for v in [*graph.input, *graph.output]}
    edge = {n.name for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
            and (set(n.input[:1]) & io or set(n.output) & io)}
    placement = Placement()
    sess = htp_session(model_path, allow_cpu_fallback=True)
    for sub in sess.get_provider_graph_assignment_info():
        nodes = [(n.name, n.op_type) for n in sub.get_nodes()]
        if sub.ep_name == EP_NAME:
            placement.on_qnn += len(nodes)
            continue
        for name, op in nodes:
            (placement.boundary.append(name) if name in edge else placement.refused.append((name, op)))
    try:
        htp_session(model_path, allow_cpu_fallback=False, record_assignment=False)
        placement.finalized = True
    except Exception as e:  # noqa: BLE001 — the compiler's message is the report
        placement.error = str(e).strip().splitlines()[0][:300]
    return placement
