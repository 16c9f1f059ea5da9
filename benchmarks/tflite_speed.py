"""TFLite FP32 vs full-integer INT8 on the bundled models: accuracy, parity and LiteRT latency, one run.

For each model: export FP32 and w8a8 (optionally w8a16) .tflite artifacts (int8 calibrated on
Fashion-MNIST train images), measure top-1 on the Fashion-MNIST test set for torch and both
artifacts, the FP32 artifact's max abs error vs torch, and p50 latency in ai-edge-litert (XNNPACK,
each artifact in its own fresh process, same thread count). Checks the issue's bars:
FP32 max abs ≤ 1e-4, INT8 top-1 within 0.5 pt of FP32, INT8 ≥ 1.5× faster than FP32.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tflite_speed.py --models vit-small mobilenet-mini \
        --out benchmarks/results/tflite

Run it on an otherwise idle machine: latency numbers from a shared CPU are not worth reporting.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _worker(path: str, threads: int, warmup: int, iters: int) -> None:
    """Fresh-process latency of one artifact (registers the TFLite runner in case the CLI does not yet)."""
    from runtimes import runner
    from runtimes.bench import bench_one
    runner.RUNNERS.setdefault("tflite", "runtimes.tflite.runner:TfliteRunner")
    print(json.dumps(bench_one(path, threads=threads, warmup=warmup, iters=iters)))


def _bench(path: Path, threads: int, warmup: int, iters: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, __file__, "--worker", str(path), "--threads", str(threads),
                          "--warmup", str(warmup), "--iters", str(iters)], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"benchmarking {path} failed: {res.stderr.strip().splitlines()[-1:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(models: list[str], out: Path, precisions: list[str], test_n: int | None, calib_n: int, threads: int,
        warmup: int, iters: int, seed: int) -> list[dict]:
    import numpy as np
    import torch
    torch.set_num_threads(threads)
    from edgevit.data import calibration_tensor, load_data
    from edgevit.models.registry import load_model
    from runtimes.tflite.artifact import export_tflite_artifact
    from runtimes.tflite.runner import TfliteRunner
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
        base = None
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
            lat = _bench(path, threads, warmup, iters)
            row = {"model": name, "precision": prec, "images": int(len(x)), "top1_torch_fp32": round(torch_top1, 2),
                   "top1_tflite": round(float((got.argmax(-1) == y).mean() * 100), 2),
                   "top1_agreement_vs_torch": round(float((got.argmax(-1) == ref.argmax(-1)).mean() * 100), 2),
                   "max_abs_vs_torch": float(np.abs(got - ref).max()), "p50_ms": lat["p50_ms"],
                   "p90_ms": lat["p90_ms"], "file_bytes": lat["file_bytes"], "export_s": round(export_s, 1),
                   "threads": threads}
            if prec == "fp32":
                base = row
                row["bar_fp32_max_abs_1e-4"] = row["max_abs_vs_torch"] <= 1e-4
            else:
                row["speedup_vs_fp32"] = round(base["p50_ms"] / row["p50_ms"], 3)
                row["top1_delta_vs_fp32"] = round(row["top1_tflite"] - base["top1_tflite"], 2)
                row["bar_top1_within_0.5"] = abs(row["top1_delta_vs_fp32"]) <= 0.5
                row["bar_speedup_1.5x"] = row["speedup_vs_fp32"] >= 1.5
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--models", nargs="+", default=["vit-small", "mobilenet-mini"])
    ap.add_argument("--precisions", nargs="+", default=["w8a8"], choices=["w8a8", "w8a16"])
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "tflite-bench", help="Artifacts (not committed).")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--test-n", type=int, default=None, help="Test images (default: all 10,000).")
    ap.add_argument("--calib-n", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--iters", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.worker:
        return _worker(a.worker, a.threads, a.warmup, a.iters)
    a.out.mkdir(parents=True, exist_ok=True)
    rows = run(a.models, a.out, a.precisions, a.test_n, a.calib_n, a.threads, a.warmup, a.iters, a.seed)
    a.results.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "tflite_speed", "threads": a.threads, "loadavg": [round(v, 2) for v in os.getloadavg()],
              "rows": rows}
    (a.results / "tflite_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    (a.results / "tflite_speed.md").write_text(markdown(result))
    print(f"wrote {a.results / 'tflite_speed.json'}")


def markdown(result: dict) -> str:
    """The README table: FP32 vs INT8 TFLite in ai-edge-litert, same run."""
    load = f"load average {result['loadavg'][0]}" if result.get("loadavg") else "load not recorded"
    lines = [f"TFLite in ai-edge-litert ({result['threads']} thread, batch 1, shared machine, {load}); "
             "INT8 by ai-edge-quantizer on 256 calibration images.", "",
             "| model | precision | top-1 TFLite (torch FP32) | agreement vs torch | max abs vs torch | p50 ms | speed-up | size |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['precision']} | {r['top1_tflite']:.2f} ({r['top1_torch_fp32']:.2f}) on "
                     f"{r['images']} | {r['top1_agreement_vs_torch']:.2f} % | {r['max_abs_vs_torch']:.2e} | "
                     f"{r['p50_ms']:.3f} | {r.get('speedup_vs_fp32', 1.0):.2f}× | {r['file_bytes'] / 1e6:.2f} MB |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
