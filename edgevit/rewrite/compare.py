"""Teacher vs NPU-native student, measured in one run on the same data: accuracy, size, ORT latency
and encoder-output quantisation error (AutoNeural's comparison)."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgevit.models.train import evaluate
from edgevit.report.metrics import count_macs, count_params
from edgevit.rewrite.checker import export_for_check
from edgevit.rewrite.robustness import robustness
from runtimes.onnx.session import cpu_session


def ort_latency_interleaved(models: dict[str, nn.Module], input_shape: tuple[int, ...], rounds: int = 10,
                            iters: int = 30, warmup: int = 20, threads: int = 1, seed: int = 0) -> dict:
    """Batch-1 onnxruntime CPU latency of each model's exported graph. The models run in alternating
    order, `iters` calls per turn, in one process: load from other processes hits all of them alike,
    so the ratio is meaningful on a shared machine even when absolute times are not. Reports the
    median over all calls, per-round medians and the load average while measuring."""
    x = np.random.default_rng(seed).standard_normal(input_shape).astype(np.float32)
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, m in models.items():
            path = export_for_check(m, input_shape, Path(tmp) / f"{len(sessions)}.onnx")
            sessions[name] = cpu_session(path, threads)
    feeds = {n: {s.get_inputs()[0].name: x} for n, s in sessions.items()}
    for n, s in sessions.items():
        for _ in range(warmup):
            s.run(None, feeds[n])
    times = {n: [] for n in sessions}
    per_round = {n: [] for n in sessions}
    load_before = os.getloadavg()
    order = list(sessions)
    for r in range(rounds):
        for n in (order if r % 2 == 0 else order[::-1]):
            s, f, t = sessions[n], feeds[n], []
            for _ in range(iters):
                t0 = time.perf_counter()
                s.run(None, f)
                t.append(time.perf_counter() - t0)
            times[n] += t
            per_round[n].append(float(np.median(t) * 1e3))
    out = {n: {"median_ms": round(float(np.median(times[n]) * 1e3), 4),
               "round_medians_ms": [round(v, 4) for v in per_round[n]]} for n in sessions}
    return {"models": out, "threads": threads, "rounds": rounds, "iters_per_round": iters,
            "loadavg_before": [round(v, 2) for v in load_before], "loadavg_after": [round(v, 2) for v in os.getloadavg()],
            "note": "shared machine: compare ratios, not absolute times"}


def compare(teacher: nn.Module, student: nn.Module, teacher_npu: nn.Module, student_npu: nn.Module,
            input_shape: tuple[int, ...], test: tuple[torch.Tensor, torch.Tensor], calib: torch.Tensor,
            eval_x: torch.Tensor, precisions=("w8a8", "w8a16"), latency_rounds: int = 10) -> dict:
    """Accuracy on `test`, params/MACs, ORT latency (teacher as exported, and both NPU graphs), and
    encoder relRMS/SQNR of both NPU graphs under `precisions` (calibrated on `calib`, measured on `eval_x`)."""
    row = {}
    for name, m in (("teacher", teacher), ("student", student)):
        row[name] = {"test_top1": evaluate(m, *test), "params": count_params(m),
                     "macs": int(count_macs(m, input_shape))}
    lat = ort_latency_interleaved({"teacher": teacher, "teacher_npu": teacher_npu, "student_npu": student_npu},
                                  input_shape, rounds=latency_rounds)
    rob = {"teacher": robustness(teacher_npu, calib, eval_x, precisions), "student": robustness(student_npu, calib,
                                                                                                 eval_x, precisions)}
    row["teacher"]["ort_ms_original_graph"] = lat["models"]["teacher"]["median_ms"]
    for name in ("teacher", "student"):
        row[name]["ort_ms"] = lat["models"][f"{name}_npu"]["median_ms"]
        row[name]["encoder"] = {p: {k: r[k] for k in ("encoder_rel_rms", "encoder_sqnr_db", "top1_agreement")}
                                for p, r in rob[name]["precisions"].items()}
        row[name]["dominant"] = {p: [d["layer"] for d in r["dominant"]] for p, r in rob[name]["precisions"].items()}
    t, s = row["teacher"], row["student"]
    summary = {"top1_gap_points": round(t["test_top1"] - s["test_top1"], 2),
               "params_ratio": round(t["params"] / s["params"], 2),
               "ort_speedup": round(t["ort_ms"] / s["ort_ms"], 2),
               "ort_speedup_vs_original_teacher_graph": round(t["ort_ms_original_graph"] / s["ort_ms"], 2),
               **{f"{p}_rel_rms_ratio": round(t["encoder"][p]["encoder_rel_rms"] /
                                              max(s["encoder"][p]["encoder_rel_rms"], 1e-30), 2) for p in precisions}}
    return {"teacher": t, "student": s, "summary": summary, "latency": lat, "robustness": rob}


def markdown(name: str, result: dict, record: dict, check: dict) -> str:
    """The output directory's report.md: one table, the training record, the check result."""
    t, s = result["teacher"], result["student"]
    precs = list(t["encoder"])
    lines = [f"# {name} → NPU-native conv student", "",
             "| | teacher (ViT) | student (conv) |", "|---|---:|---:|",
             f"| Fashion-MNIST test top-1 | {t['test_top1']:.2f} % | {s['test_top1']:.2f} % |",
             f"| parameters | {t['params']:,} | {s['params']:,} |",
             f"| MACs (batch 1) | {t['macs']:,} | {s['macs']:,} |",
             f"| ORT CPU latency, 1 thread, NPU graph | {t['ort_ms']:.3f} ms | {s['ort_ms']:.3f} ms |",
             f"| ORT CPU latency, 1 thread, teacher as exported | {t['ort_ms_original_graph']:.3f} ms | – |"]
    for p in precs:
        te, se = t["encoder"][p], s["encoder"][p]
        lines.append(f"| {p.upper()} encoder relRMS / SQNR | {100 * te['encoder_rel_rms']:.2f} % / "
                     f"{te['encoder_sqnr_db']:.1f} dB | {100 * se['encoder_rel_rms']:.2f} % / "
                     f"{se['encoder_sqnr_db']:.1f} dB |")
    sm = result["summary"]
    lat = result["latency"]
    lines += ["", f"Gap {sm['top1_gap_points']:+.2f} points; "
              + ", ".join(f"{p.upper()} encoder relRMS {sm[f'{p}_rel_rms_ratio']}× lower" for p in precs)
              + f"; ORT CPU speed-up {sm['ort_speedup']}× against the teacher's NPU graph, "
              f"{sm['ort_speedup_vs_original_teacher_graph']}× against its original graph.", "",
              f"Latency: {lat['rounds']} interleaved rounds × {lat['iters_per_round']} calls, medians; load average "
              f"{lat['loadavg_before'][0]} → {lat['loadavg_after'][0]} (shared machine: compare ratios).",
              f"Quantisation: {result['robustness']['student']['scheme']}.", "",
              f"Distillation: {record['train_samples']} training images, {record['recipe']['epochs']} epochs + "
              f"{record['recipe']['robust_epochs']} quantisation-noise epoch(s), {record['train_s']} s training + "
              f"{record['teacher_cache_s']} s teacher targets; per epoch: "
              + ", ".join(f"{h['test_top1']:.2f} %" for h in record["history"]) + ".", "",
              f"Op check ({check['target']}): {check['violations']} violations"
              + (f"; QNN HTP compile {'finalised' if check['qnn'].get('finalized') else 'not finalised'}, "
                 f"{check['qnn'].get('nodes_on_htp')} nodes on HTP" if check.get("qnn") and "finalized" in check["qnn"]
                 else (f"; QNN: {check['qnn']['skipped']}" if check.get("qnn") else "")) + "."]
    return "\n".join(lines) + "\n"
