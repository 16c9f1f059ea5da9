"""The one way edgevit opens an onnxruntime CPU session, so integer graphs compute the same on every CPU.

onnxruntime's x86 u8×s8 integer kernels sum pairs of products in int16 on CPUs without VNNI (AVX2,
AVX-512F) and saturate there: vit-small W8A8 agreed 98.0 % / 24.5 dB with its torch model on such a CPU
against 100 % / 48 dB on a VNNI one. `session.x64quantprecision=1` makes onnxruntime re-bias int8 weights
to uint8 at session creation and run its exact u8×u8 path. Every quantised artifact's manifest carries it
as a run-time requirement (`quant.runtime_options`, read by the torch-free device demo too), and every
session edgevit opens applies it where it matters: on x86 CPUs whose u8×s8 kernels are not exact
(runtimes.machine.u8s8_exact). On VNNI CPUs the default kernels are already exact and the u8×u8 path only
costs time (mobilenet-mini's integer graph ran at 0.74× FP32 with it against 1.54× without, on AVX-512
VNNI); ARM builds have no such path. `benchmarks/onnx_speed.py` times both paths on the machine it runs on.
"""
from __future__ import annotations

from pathlib import Path

from runtimes.machine import u8s8_exact

EXACT_INT8_KEY = "session.x64quantprecision"
# Session entries every quantised artifact requires at run time (applied per CPU, see above).
PORTABLE_CONFIG = {EXACT_INT8_KEY: "1"}
# Entries edgevit reads itself (the ONNX format has no field for them); never passed to onnxruntime.
OPTIMIZATION_KEY = "edgevit.graph_optimization_level"
_LEVELS = ("none", "basic", "extended", "all")


def manifest_config(manifest: dict | None) -> dict:
    """The session entries an artifact's manifest asks for (`quant.runtime_options`), as strings."""
    return {k: str(v) for k, v in ((manifest or {}).get("quant") or {}).get("runtime_options", {}).items()}


def session_options(threads: int = 1, config: dict | None = None, optimization: str | None = None,
                    exact_int8: bool | None = None):
    """SessionOptions: `threads` intra-op threads, sequential, quiet, with the `config` entries.

    `exact_int8`: None applies onnxruntime's exact x86 int8 path where this CPU needs it (the default);
    True always, False never — only for measuring what each path costs and computes."""
    import onnxruntime as ort
    entries = {**PORTABLE_CONFIG, **{k: str(v) for k, v in (config or {}).items()}}
    if exact_int8 is False or (exact_int8 is None and u8s8_exact()):
        entries.pop(EXACT_INT8_KEY, None)
    level = optimization or entries.get(OPTIMIZATION_KEY, "all")
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
                optimization: str | None = None, exact_int8: bool | None = None):
    """An onnxruntime CPU InferenceSession of a file or serialised model with `session_options`."""
    import onnxruntime as ort
    opts = session_options(threads, config, optimization, exact_int8)
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts,
                                providers=["CPUExecutionProvider"])
