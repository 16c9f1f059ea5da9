"""`split_report.json`: sizes, MACs, accuracy and latencies of the split, all measured in one run.

Latency: each ONNX file (original, every sub-model, fusion) gets its own single-thread onnxruntime
session on this host; rounds run every session once in turn (interleaved, so drift and neighbours hit
all models alike) and the median per model is kept. Parallel latency = slowest device + fusion, as if
each sub-model had its own device of this host's speed; a device's *expected* latency divides by its
relative `compute`. Transfer time between devices is not modelled (the outputs are |S|+1 floats).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgevit.models.train import evaluate
from edgevit.report.metrics import count_macs, count_params, fp32_size_bytes, human_bytes, human_count
from edgevit.split.executors import ort_session
from edgevit.split.model import SplitModel


def measure_latency_ms(paths: dict[str, Path], inputs: dict[str, np.ndarray], rounds: int = 100,
                       warmup: int = 5, configs: dict[str, dict] | None = None) -> dict[str, float]:
    """Median wall time (ms) of one `run` per model, interleaved across models."""
    sessions = {k: ort_session(p, threads=1, config=(configs or {}).get(k)) for k, p in paths.items()}
    names = {k: s.get_inputs()[0].name for k, s in sessions.items()}
    times = {k: [] for k in sessions}
    for r in range(warmup + rounds):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, {names[k]: inputs[k]})
            if r >= warmup:
                times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v) * 1e3) for k, v in times.items()}


def build_report(split: SplitModel, plan: dict, original: nn.Module, input_shape: tuple[int, ...],
                 files: dict[str, Path], x_eval: torch.Tensor, y_eval: torch.Tensor, labels: list[str],
                 batches: tuple[int, ...] = (1, 64), rounds: int = 100, configs: dict[str, dict] | None = None) -> dict:
    """`files` maps 'original', 'fusion' and every device name to its ONNX file; `configs` their
    onnxruntime session entries (quantised graphs)."""
    acc_orig = evaluate(original, x_eval, y_eval)
    acc_split = evaluate(split, x_eval, y_eval)
    n_feat = split.fusion.fc1.in_features
    latency = {}
    for b in batches:
        img = np.zeros((b, *input_shape[1:]), np.float32)
        inputs = {k: (np.zeros((b, n_feat), np.float32) if k == "fusion" else img) for k in files}
        latency[b] = measure_latency_ms(files, inputs, rounds=rounds if b == 1 else max(10, rounds // 5),
                                        configs=configs)
    o_params = count_params(original)
    devices = []
    for d, sub in zip(plan["devices"], split.subs):
        p = count_params(sub)
        devices.append({
            "device": d["name"], "classes": [labels[c] for c in d["classes"]], "params": p,
            "fp32_bytes": fp32_size_bytes(sub), "file_bytes": files[d["name"]].stat().st_size,
            "macs": count_macs(sub, input_shape), "heads": sum(d["heads"]), "hidden": sum(d["hidden"]),
            "branches": d["branches"], "cost_share": d["cost_share"],
            "size_reduction": round(o_params / p, 2),
            "file_reduction": round(files["original"].stat().st_size / files[d["name"]].stat().st_size, 2),
            "latency_ms": {str(b): round(latency[b][d["name"]], 4) for b in batches},
            "expected_latency_ms": {str(b): round(latency[b][d["name"]] / d["compute"], 4) for b in batches}})
    sub_params = sum(d["params"] for d in devices)
    fusion_params = count_params(split.fusion)
    parallel = {str(b): max(latency[b][d["name"]] / d["compute"] for d in plan["devices"]) + latency[b]["fusion"]
                for b in batches}
    return {
        "original": {"params": o_params, "fp32_bytes": fp32_size_bytes(original),
                     "file_bytes": files["original"].stat().st_size, "macs": count_macs(original, input_shape),
                     "latency_ms": {str(b): round(latency[b]["original"], 4) for b in batches}},
        "devices": devices,
        "fusion": {"params": fusion_params, "latency_ms": {str(b): round(latency[b]["fusion"], 4) for b in batches}},
        "accuracy": {"original_top1": acc_orig, "split_top1": acc_split, "delta_points": round(acc_split - acc_orig, 2),
                     "eval_images": len(y_eval)},
        "size": {"total_params": sub_params + fusion_params,
                 "total_reduction": round(o_params / (sub_params + fusion_params), 3),
                 "largest_device_fraction": round(max(d["params"] for d in devices) / o_params, 4),
                 "largest_device_reduction": round(o_params / max(d["params"] for d in devices), 2),
                 "files_bytes": sum(d["file_bytes"] for d in devices) + files["fusion"].stat().st_size,
                 "largest_device_file_reduction": round(files["original"].stat().st_size
                                                        / max(d["file_bytes"] for d in devices), 2),
                 "note": "reductions vs the FP32 original: params, and ONNX file bytes (quantised files with --bits)"},
        "latency": {"parallel_ms": {b: round(v, 4) for b, v in parallel.items()},
                    "original_ms": {str(b): round(latency[b]["original"], 4) for b in batches},
                    "parallel_vs_original": {str(b): round(parallel[str(b)] / latency[b]["original"], 4)
                                             for b in batches},
                    "method": "onnxruntime CPU (all graph optimisations), 1 thread per model, interleaved rounds, "
                              "median; parallel = slowest device (latency / compute) + fusion; original = the "
                              "unsplit FP32 model",
                    "loadavg": [round(v, 2) for v in os.getloadavg()]},
        "quant": split.quant,
    }


def report_rows(report: dict) -> tuple[list[str], list[list]]:
    """Columns and rows of the printed table (one row per device, then fusion and the original)."""
    b = "1"
    cols = ["part", "classes", "params", "size", "MACs", "latency b1 (ms)", "reduction"]
    rows = [[d["device"], ", ".join(d["classes"]), human_count(d["params"]), human_bytes(d["file_bytes"]),
             human_count(d["macs"]), f"{d['latency_ms'][b]:.3f}", f"{d['size_reduction']:.1f}x"]
            for d in report["devices"]]
    rows.append(["fusion", "all", human_count(report["fusion"]["params"]), "-", "-",
                 f"{report['fusion']['latency_ms'][b]:.3f}", "-"])
    o = report["original"]
    rows.append(["original", "all", human_count(o["params"]), human_bytes(o["file_bytes"]), human_count(o["macs"]),
                 f"{o['latency_ms'][b]:.3f}", "1.0x"])
    return cols, rows
