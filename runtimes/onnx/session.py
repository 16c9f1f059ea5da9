"""The one way edgevit opens an onnxruntime CPU session, so integer graphs compute the same on every CPU.

onnxruntime's x86 U8S8 integer kernels sum pairs of u8×s8 products in int16 on CPUs without VNNI (AVX2,
AVX-512F) and saturate there: vit-small W8A8 agreed 98.0 % / 24.5 dB with its torch model on such a CPU
against 100 % / 48 dB on a VNNI one. `session.x64quantprecision=1` makes onnxruntime re-bias int8 weights
to uint8 at session creation so the exact U8U8 path runs; on ARM and VNNI CPUs the result is the same
either way. It is therefore on in every session edgevit opens and written into each quantised
artifact's manifest (`quant.runtime_options`), where the torch-free device demo reads it.
What it costs in latency is measured by `benchmarks/onnx_speed.py` (rows `… (x64 fast path)`).
"""
from __future__ import annotations

from pathlib import Path

# Session entries every quantised artifact needs at run time, whatever the CPU.
PORTABLE_CONFIG = {"session.x64quantprecision": "1"}
# Entries edgevit reads itself (the ONNX format has no field for them); never passed to onnxruntime.
OPTIMIZATION_KEY = "edgevit.graph_optimization_level"
_LEVELS = ("none", "basic", "extended", "all")


def manifest_config(manifest: dict | None) -> dict:
    """The session entries an artifact's manifest asks for (`quant.runtime_options`), as strings."""
    return {k: str(v) for k, v in ((manifest or {}).get("quant") or {}).get("runtime_options", {}).items()}


def session_options(threads: int = 1, config: dict | None = None, optimization: str | None = None,
                    portable: bool = True):
    """SessionOptions: `threads` intra-op threads, sequential, quiet, `config` entries on top of
    PORTABLE_CONFIG (`portable=False` drops it: only for measuring what it costs)."""
    import onnxruntime as ort
    entries = {**(PORTABLE_CONFIG if portable else {}), **{k: str(v) for k, v in (config or {}).items()}}
    if not portable:
        entries.pop("session.x64quantprecision", None)
    level = optimization or entries.pop(OPTIMIZATION_KEY, "all")
    entries.pop(OPTIMIZATION_KEY, None)
    if level not in _LEVELS:
        raise ValueError(f"graph optimisation level {level!r} is not one of {', '.join(_LEVELS)}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    opts.log_severity_level = 3
    for key, value in entries.items():
        opts.add_session_config_entry(key, value)
    return opts


def cpu_session(model: str | Path | bytes, threads: int = 1, config: dict | None = None,
                optimization: str | None = None, portable: bool = True):
    """An onnxruntime CPU InferenceSession of a file or serialised model with `session_options`."""
    import onnxruntime as ort
    opts = session_options(threads, config, optimization, portable)
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts,
                                providers=["CPUExecutionProvider"])
