"""TFLite FP32 vs full-integer INT8 on the bundled models: accuracy, parity and LiteRT latency, one run.

For each model: export FP32 and w8a8 (optionally w8a16) .tflite artifacts (int8 calibrated on
Fashion-MNIST train images), measure top-1 on the Fashion-MNIST test set for torch and both
artifacts, the FP32 artifact's max abs error vs torch, and latency in ai-edge-litert (XNNPACK, same
thread count): one model's FP32 and INT8 artifacts in one process, alternating blocks of runs over
several rounds, median of the rounds' medians (runtimes.bench.bench_interleaved), so a shared
machine's load hits both alike; the load average is recorded. Also records which ops XNNPACK
leaves to the builtin kernels (runtimes.tflite.delegation). Checks the issue's bars:
FP32 max abs ≤ 1e-4, INT8 top-1 within 0.5 pt of FP32, INT8 ≥ 1.5× faster than FP32.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tflite_speed.py --test-n 2000
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Why vit-small's INT8 stays below 1.5×: sub-graph timings of its pieces (FP32 vs INT8 .tflite, XNNPACK,
# 1 thread, interleaved, 7 rounds, median; shared machine, load 1.4-3). Rerun that profile when LiteRT
# changes; delegation_report in the table shows whether the builtin-kernel ops are still there.
PROFILE_NOTE = (
    "Why vit-small INT8 is not 1.5× faster (vit-small's pieces timed as sub-graphs, FP32 → INT8 ms): 48 FCs "
    "0.228 → 0.082 (2.8×); 25 LayerNorms as litert-torch writes them 0.020 → 0.243 (SQUARED_DIFFERENCE, SUB, "
    "RSQRT on builtin int8 kernels: the earlier 0.60×), lowered to MEAN/MUL/RSQRT 0.016 → 0.034; 12 attention "
    "cores (2 BATCH_MATMUL + SOFTMAX) 0.087 → 0.129; 12 exact GELUs 0.020 → 0.022. ai-edge-litert 2.3's XNNPACK "
    "delegates no int8 BATCH_MATMUL, SOFTMAX, GELU or RSQRT (also not with its latest-features flag or the "
    "CompiledModel API), so ~0.19 ms of INT8 work plus 99 partition switches stay outside it, against a 1.5× "
    "budget of 0.24 ms for the whole model. A sigmoid GELU would be delegated (0.006 ms) but changes the model "
    "and does not close the gap.")
sys.path.insert(0, str(ROOT))


def run(models: list[str], out: Path, precisions: list[str], test_n: int | None, calib_n: int, threads: int,
        rounds: int, iters: int, seed: int) -> list[dict]:
    import numpy as np
    import torch
    torch.set_num_threads(threads)
    from edgevit.data import calibration_tensor, load_data
    from edgevit.models.registry import load_model
    from runtimes import runner
    from runtimes.bench import bench_interleaved
    from runtimes.tflite.artifact import export_tflite_artifact
    from runtimes.tflite.delegation import delegation_report
    from runtimes.tflite.runner import TfliteRunner
    runner.RUNNERS.setdefault("tflite", "runtimes.tflite.runner:TfliteRunner")
    rows = []
    for name in models:
        model, meta = load_model(name)
        spec = f"fashion-mnist:{test_n}" if test_n else "fashion-mnist"
        x, y = load_data(spec, meta.preprocess, "test", seed)
        x, y = x.numpy(), y.numpy()
        cal = calibration_tensor(f"fashion-mnist:{calib_n}", meta.preprocess, seed).numpy()
        with torch.no_grad():
            ref = torch.cat([model.eval()(torch.from_numpy(x[i:i + 500])) for i in range(0, len(x), 500)]).numpy()
        torch_top1 = float((ref.argmax(-1) == y).mean() * 100)
        model_rows, paths = [], []
        for prec in ["fp32", *precisions]:
            path = out / f"{name}-{prec}"
            t0 = time.perf_counter()
            art = export_tflite_artifact(model, path, input_shape=meta.input_shape,
                                         preprocess=meta.preprocess.to_dict(), labels=list(meta.labels),
                                         parity_inputs=x[:256], parity_labels=y[:256], precision=prec,
                                         calibration=None if prec == "fp32" else cal,
                                         calibration_data=f"fashion-mnist:{calib_n} (train, seed {seed})",
                                         model_info={"name": name}, overwrite=True)
            export_s = time.perf_counter() - t0
            got = TfliteRunner(art, threads=threads).run(x)
            row = {"model": name, "precision": prec, "images": int(len(x)), "top1_torch_fp32": round(torch_top1, 2),
                   "top1_tflite": round(float((got.argmax(-1) == y).mean() * 100), 2),
                   "top1_agreement_vs_torch": round(float((got.argmax(-1) == ref.argmax(-1)).mean() * 100), 2),
                   "max_abs_vs_torch": float(np.abs(got - ref).max()), "export_s": round(export_s, 1),
                   "threads": threads, "lowering": art.manifest["metrics"].get("lowering", {}),
                   "xnnpack": delegation_report(art.entry, threads)}
            model_rows.append(row)
            paths.append(str(path))
        for row, lat in zip(model_rows, bench_interleaved(paths, threads=threads, rounds=rounds, iters=iters)):
            row.update({"median_ms": lat["median_ms"], "rounds_ms_min_max": lat["rounds_ms_min_max"],
                        "rounds": rounds, "iters_per_round": iters, "file_bytes": lat["file_bytes"],
                        "loadavg_start": lat["loadavg_start"], "loadavg_end": lat["loadavg_end"]})
        base = model_rows[0]
        base["bar_fp32_max_abs_1e-4"] = base["max_abs_vs_torch"] <= 1e-4
        for row in model_rows[1:]:
            row["speedup_vs_fp32"] = round(base["median_ms"] / row["median_ms"], 3)
            row["top1_delta_vs_fp32"] = round(row["top1_tflite"] - base["top1_tflite"], 2)
            row["bar_top1_within_0.5"] = abs(row["top1_delta_vs_fp32"]) <= 0.5
            row["bar_speedup_1.5x"] = row["speedup_vs_fp32"] >= 1.5
        for row in model_rows:
            print(json.dumps(row), flush=True)
        rows += model_rows
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["vit-small", "mobilenet-mini"])
    ap.add_argument("--precisions", nargs="+", default=["w8a8"], choices=["w8a8", "w8a16"])
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "tflite-bench", help="Artifacts (not committed).")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--test-n", type=int, default=None, help="Test images (default: all 10,000).")
    ap.add_argument("--calib-n", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15, help="Alternating rounds per model (median reported).")
    ap.add_argument("--iters", type=int, default=100, help="Runs per artifact per round.")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    rows = run(a.models, a.out, a.precisions, a.test_n, a.calib_n, a.threads, a.rounds, a.iters, a.seed)
    a.results.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "tflite_speed", "threads": a.threads, "loadavg": [round(v, 2) for v in os.getloadavg()],
              "rows": rows, "note": PROFILE_NOTE}
    (a.results / "tflite_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    (a.results / "tflite_speed.md").write_text(markdown(result))
    print(f"wrote {a.results / 'tflite_speed.json'}")


def markdown(result: dict) -> str:
    """The README table: FP32 vs INT8 TFLite in ai-edge-litert, same process, interleaved."""
    loads = [r["loadavg_start"][0] for r in result["rows"] if r.get("loadavg_start")]
    load = f"load average {min(loads)}–{max(loads)}" if loads else "load not recorded"
    r0 = result["rows"][0]
    lines = [f"TFLite in ai-edge-litert 2.3 (XNNPACK, {result['threads']} thread, batch 1; FP32 and INT8 of a model "
             f"timed in one process, {r0.get('rounds', '?')} alternating rounds × {r0.get('iters_per_round', '?')} runs, "
             f"median; shared 2-core machine, {load}). INT8 by ai-edge-quantizer on 256 calibration images; "
             "LayerNorm lowered to MEAN/MUL/RSQRT for both. `builtin ops` = ops XNNPACK leaves to LiteRT's "
             "builtin kernels (partitions).", "",
             "| model | precision | top-1 TFLite (torch FP32) | agreement vs torch | max abs vs torch | median ms "
             "| speed-up | size | builtin ops (partitions) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        x = r.get("xnnpack", {})
        builtin = ", ".join(f"{k} {v}" for k, v in sorted(x.get("builtin_ops", {}).items())) or "none"
        lines.append(f"| {r['model']} | {r['precision']} | {r['top1_tflite']:.2f} ({r['top1_torch_fp32']:.2f}) on "
                     f"{r['images']} | {r['top1_agreement_vs_torch']:.2f} % | {r['max_abs_vs_torch']:.2e} | "
                     f"{r['median_ms']:.3f} | {r.get('speedup_vs_fp32', 1.0):.2f}× | {r['file_bytes'] / 1e6:.2f} MB | "
                     f"{builtin} ({x.get('partitions', '?')}) |")
    if result.get("note"):
        lines += ["", result["note"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
