"""Offline compile of a QDQ graph into a QNN context binary (EPContext ONNX) for one Snapdragon.

onnxruntime-qnn compiles the graph with the real QNN HTP compiler for the `htp_arch`/`soc_model`
asked for and, with `ep.context_enable`, writes an ONNX file holding one EPContext node whose
attribute is the serialised context binary: what a phone loads without compiling again. Every node
must land on QNN (CPU fallback disabled), so a written context is a whole-graph NPU artifact.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from runtimes.errors import ExportError
from runtimes.qnn.errors import QnnMissing, require_qnn


@dataclass(frozen=True)
class Soc:
    name: str        # Qualcomm part number
    soc_model: int   # QNN_SOC_MODEL_* of the QNN SDK (QnnTypes.h)
    htp_arch: int    # Hexagon HTP generation (v68 … v81)
    product: str


# QNN SoC ids and HTP generations as the QNN SDK / ExecuTorch's Qualcomm backend list them.
SOCS = {s.name: s for s in [
    Soc("SM8350", 30, 68, "Snapdragon 888"),
    Soc("SM8450", 36, 69, "Snapdragon 8 Gen 1"),
    Soc("SM8475", 42, 69, "Snapdragon 8+ Gen 1"),
    Soc("SM8550", 43, 73, "Snapdragon 8 Gen 2"),
    Soc("SM8650", 57, 75, "Snapdragon 8 Gen 3"),
    Soc("SM8750", 69, 79, "Snapdragon 8 Elite"),
    Soc("SM8850", 87, 81, "Snapdragon 8 Elite Gen 5"),
    Soc("SC8380XP", 60, 73, "Snapdragon X Elite"),
]}


def parse_soc(name: str) -> Soc:
    """'SM8650' (any case) → Soc; ExportError listing the known parts otherwise."""
    soc = SOCS.get(name.strip().upper())
    if soc is None:
        raise ExportError(f"unknown Snapdragon {name!r}; use one of {', '.join(SOCS)} "
                          "(e.g. --soc SM8650 for Snapdragon 8 Gen 3)")
    return soc


def qnn_session(model_path: str | Path, provider_options: dict | None = None, config: dict | None = None):
    """An HTP InferenceSession with CPU fallback disabled and extra provider options / session config."""
    import onnxruntime as ort
    from runtimes.qnn import session as qs
    require_qnn()
    try:
        htp = qs._register()   # noqa: SLF001 — the one place the plugin is registered
    except qs.QnnUnavailable as e:
        raise QnnMissing(str(e)) from e
    devices = [d for d in ort.get_ep_devices() if d.ep_name == qs.EP_NAME]
    if not devices:
        raise QnnMissing("the QNN EP registered but exposes no HTP device")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    for k, v in (config or {}).items():
        so.add_session_config_entry(k, str(v))
    so.add_provider_for_devices(devices[:1], {"backend_path": htp, **{k: str(v) for k, v in (provider_options or {}).items()}})
    return ort.InferenceSession(str(model_path), sess_options=so)


def compile_context(qdq_path: str | Path, out_path: str | Path, soc: Soc | str) -> dict:
    """Compile `qdq_path` for `soc` into `out_path` (EPContext ONNX, binary embedded); returns its facts."""
    soc = parse_soc(soc) if isinstance(soc, str) else soc
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        staged = Path(tmp) / out_path.name
        try:
            qnn_session(qdq_path, {"htp_arch": soc.htp_arch, "soc_model": soc.soc_model},
                        {"ep.context_enable": 1, "ep.context_embed_mode": 1, "ep.context_file_path": staged})
        except QnnMissing:
            raise
        except Exception as e:  # noqa: BLE001 — the compiler's first line is the report
            raise ExportError(f"QNN HTP compile for {soc.name} (v{soc.htp_arch}) failed: "
                              f"{(str(e).strip().splitlines() or ['?'])[0][:300]}") from e
        nodes = onnx.load(str(staged)).graph.node
        if [n.op_type for n in nodes] != ["EPContext"]:
            raise ExportError(f"the {soc.name} context holds {[n.op_type for n in nodes]}, not one EPContext node: "
                              "part of the graph stayed off the NPU")
        blob = next(len(a.s) for a in nodes[0].attribute if a.name == "ep_cache_context")
        staged.replace(out_path)
    return {"soc": soc.name, "product": soc.product, "soc_model": soc.soc_model, "htp_arch": soc.htp_arch,
            "context_bytes": blob}
