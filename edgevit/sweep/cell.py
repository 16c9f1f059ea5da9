"""One cell: quantize → (optional) export → evaluate, in whatever process runs it (a Ray worker).

Scoring is benchmarks/ptq_compare.py's: every tool sees the same calibration images (`load_sets` with the
cell's seed) and is scored on the same evaluation images — logit SQNR and top-1 agreement against the
FP32 model, top-1 against labels where the data has them — so a grid reproduces its numbers.
"""
from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

import torch


def logits(fn, x: torch.Tensor, batch: int = 250) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([torch.as_tensor(fn(x[i:i + batch])) for i in range(0, len(x), batch)])


def score(out: torch.Tensor, ref: torch.Tensor, y) -> dict:
    import quant
    s = {"agreement": 100.0 * (out.argmax(-1) == ref.argmax(-1)).double().mean().item(),
         "sqnr_db": quant.sqnr_db(ref, out)}
    if y is not None:
        s["top1"] = 100.0 * (out.argmax(-1) == y).double().mean().item()
    return s


def packed_bytes(qmodel) -> int:
    """Size of the packed edgevit checkpoint (codes + scales), the size `edgevit quantize` writes."""
    import quant
    with tempfile.TemporaryDirectory() as d:
        return quant.save_quantized(qmodel, Path(d) / "ck")["total_bytes"]


def where() -> dict:
    """Which node and process ran the cell (recorded so a cluster run shows its placement)."""
    node = None
    try:
        import ray
        if ray.is_initialized():
            node = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 — outside Ray
        pass
    return {"node_id": node, "host": socket.gethostname(), "pid": os.getpid()}


def _hold(hold: dict | None, attempt: int) -> None:
    """Test hook for fault tolerance: write this worker's pid and sleep, so a test can kill it mid-cell."""
    if not hold or attempt > int(hold.get("attempts", 1)):
        return
    path = Path(f"{hold['pid_file']}.{attempt}")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, path)
    time.sleep(float(hold.get("seconds", 60)))


def run_cell(spec: dict, model_sha256: str, attempt: int = 1) -> dict:
    """The cell's result row; an exception inside is a result too (status failed, its one-line error)."""
    t0, c0 = time.perf_counter(), time.process_time()
    torch.set_num_threads(1)
    row = {"attempts": attempt, **where()}
    try:
        row |= _run(spec, model_sha256, attempt)
        row["status"] = "ok"
    except Exception as e:  # noqa: BLE001 — one cell failing must not end the sweep
        row |= {"status": "failed", "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]}
    row["wall_s"] = time.perf_counter() - t0
    row["cpu_s"] = time.process_time() - c0   # ≪ wall_s: the worker waited for a core (a shared machine)
    return row


def _run(spec: dict, model_sha256: str, attempt: int) -> dict:
    from edgevit.models.registry import load_model
    from edgevit.ptq import load_sets
    from edgevit.sweep.grid import model_sha256 as hash_model
    if model_sha256 and hash_model(spec["model"], spec["weights"]) != model_sha256:
        raise RuntimeError(f"{spec['model']} on this node has other weights than on the driver")
    torch.manual_seed(0)
    model, meta = load_model(spec["model"], spec["weights"])
    model.eval()
    seed = spec["seed"]
    calib, x, y, note = load_sets(spec["calib"], spec["eval"], spec["eval_limit"], meta, seed)
    _hold(spec["hold"], attempt)
    ref = logits(model, x)
    out = {"data": note, "fp32_bytes": sum(p.numel() * 4 for p in model.parameters()), "eval_images": len(x),
           **({"fp32_top1": score(ref, ref, y)["top1"]} if y is not None else {})}
    fmt, bits = spec["precision"].split(":")
    tool = spec["tool"]
    t0 = time.perf_counter()
    if tool == "edgevit":
        import edgevit.api
        torch.manual_seed(seed)
        q = edgevit.api.quantize(model, meta, fmt, bits, method=spec["method"], calib=spec["calib"],
                                 recipe=spec["recipe"], seed=seed, weights=spec["weights"], eval_data=None)
        out["quantize_s"] = time.perf_counter() - t0
        out |= score(logits(q.model, x), ref, y)
        out["size_bytes"] = packed_bytes(q.model)
        units = len((q.info.get("method_report") or {}).get("units", []))
        if units:
            out["units"] = units
        if spec["export"]:
            out["export"] = _export(q, spec["export"], seed)
    elif tool == "onnxruntime":
        fn, out["size_bytes"] = _ort(model, fmt, bits, spec["method"], calib, x)
        out["quantize_s"] = time.perf_counter() - t0
        out |= score(logits(fn, x), ref, y)
    elif tool == "brevitas":
        import quant
        from edgevit.backends import brevitas_backend
        recipe = ({} if fmt == "int" else {"weight_granularity": "channel", "act_granularity": "tensor"}) | spec["recipe"]
        q, rep = brevitas_backend.quantize(model, quant.parse_spec(fmt, bits, recipe), calib, method=spec["method"],
                                           keep_brevitas=True)
        out["quantize_s"] = time.perf_counter() - t0
        out |= score(logits(rep.pop("brevitas_model"), x), ref, y)
        out["size_bytes"] = packed_bytes(q)
        out["as_edgevit_checkpoint"] = score(logits(q, x), ref, y)
    out["eval_s"] = time.perf_counter() - t0 - out["quantize_s"]
    return out


def _export(q, runtime: str, seed: int) -> dict:
    """Export into a scratch directory (an exported artifact is parity-checked there) and keep its numbers."""
    import edgevit.api
    from runtimes.bench import bench_interleaved
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        art = edgevit.api.export(q, Path(d) / "artifact", runtime=runtime, seed=seed)
        m = art.manifest
        size = sum(f.stat().st_size for f in art.root.rglob("*") if f.is_file())
        export_s = time.perf_counter() - t0
        # batch-1 latency on this worker's one thread: the Pareto plot's latency axis (cells share the machine,
        # so it orders artifacts; benchmarks/onnx_speed.py measures ratios properly, interleaved)
        latency = bench_interleaved([str(art.root)], threads=1, rounds=3, iters=20, warmup=5)[0]["median_ms"]
        return {"runtime": runtime, "artifact_bytes": size, "export_s": export_s, "latency_ms": latency,
                "parity": m.get("parity", {}).get("metrics"), "metrics": m.get("metrics")}


def _ort(model, fmt: str, bits: str, calib_method: str, calib: torch.Tensor, x: torch.Tensor):
    """onnxruntime.quantization.quantize_static: QDQ, per-channel weights, static activations — the peer
    exactly as benchmarks/ptq_compare.py ran it."""
    import onnxruntime
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    from runtimes.onnx.export import export_onnx
    from runtimes.onnx.session import cpu_session
    onnxruntime.set_default_logger_severity(3)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": calib[i:i + 1].numpy()} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    d = Path(tempfile.mkdtemp(prefix="edgevit-sweep-ort-"))
    try:
        fp32 = export_onnx(model, (1, *x.shape[1:]), d / "fp32.onnx")
        out = d / "q.onnx"
        quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt4 if bits.startswith("w4") else QuantType.QInt8,
                        activation_type=QuantType.QUInt8, calibrate_method=getattr(CalibrationMethod, calib_method),
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        sess = cpu_session(out.read_bytes())   # the same exact-int8 settings as edgevit's own artifacts
        return (lambda b: sess.run(None, {"input": b.numpy()})[0]), out.stat().st_size
    finally:
        import shutil
        shutil.rmtree(d, ignore_errors=True)
