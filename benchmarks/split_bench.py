"""ED-ViT split benchmark: `edgevit split MODEL --devices N` (FP32, then --bits w8a8) and the issue's targets.

    .venv/bin/python benchmarks/split_bench.py --model vit-small --devices 4

Both runs share one distillation work dir, so the quantised run resumes the FP32 run's distilled
sub-models and differs only by quantisation. Latencies are measured inside each split run (onnxruntime,
1 thread per model, interleaved rounds, medians; the load average is recorded — on a shared machine
compare ratios, not absolute times).
Artifacts and the distillation work dir go under out/bench/ (git-ignored); the summary goes to
benchmarks/results/split_bench.json and .md; each target is printed as PASS/MISS.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

TARGETS = {"accuracy_drop_points": 2.0, "largest_device_fraction": 0.25, "parallel_vs_original": 0.4}


def run_split(model: str, devices: str, results: Path, tag: str, work: Path, extra: list[str]) -> dict:
    out = results / tag
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "edgevit.cli", "split", model, "--devices", devices, "--out", str(out),
           "--work-dir", str(work), *extra]
    t0 = time.time()
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.time() - t0
    r = json.loads((out / "split_report.json").read_text())
    drop = r["accuracy"]["original_top1"] - r["accuracy"]["split_top1"]
    return {
        "command": " ".join(["edgevit", *cmd[3:]]), "split_wall_s": round(wall, 1), "quant": r.get("quant"),
        "original_top1": r["accuracy"]["original_top1"], "split_top1": r["accuracy"]["split_top1"],
        "accuracy_drop_points": round(drop, 2), "eval_images": r["accuracy"]["eval_images"],
        "largest_device_fraction": r["size"]["largest_device_fraction"],
        "total_size_reduction": r["size"]["total_reduction"],
        "largest_device_file_reduction": r["size"]["largest_device_file_reduction"],
        "files_bytes": r["size"]["files_bytes"],
        "per_device": {d["device"]: {"params": d["params"], "file_bytes": d["file_bytes"], "branches": d["branches"],
                                     "cost_share": d["cost_share"], "size_reduction": d["size_reduction"],
                                     "latency_ms_b1": d["latency_ms"]["1"]} for d in r["devices"]},
        "original_file_bytes": r["original"]["file_bytes"],
        "parallel_vs_original": r["latency"]["parallel_vs_original"],
        "parallel_ms": r["latency"]["parallel_ms"], "original_ms": r["latency"]["original_ms"],
        "fusion_ms": r["fusion"]["latency_ms"], "loadavg": r["latency"].get("loadavg"),
        "parity_vs_torch": r["parity"]["metrics"], "latency_method": r["latency"]["method"],
    }


def checks(s: dict) -> list[tuple[str, bool]]:
    out = [("fused accuracy within 2 points", s["accuracy_drop_points"] <= TARGETS["accuracy_drop_points"]),
           ("largest sub-model <= 0.25x params", s["largest_device_fraction"] <= TARGETS["largest_device_fraction"])]
    return out + [(f"parallel latency <= 0.4x (batch {b})", v <= TARGETS["parallel_vs_original"])
                  for b, v in s["parallel_vs_original"].items()]


def markdown(runs: dict[str, dict]) -> str:
    lines = ["# ED-ViT split benchmark", "", "Measured by `benchmarks/split_bench.py` on a shared 2-core machine "
             "(load average recorded per run; latency ratios come from interleaved rounds in one process).", "",
             "| run | top-1 split / original | Δ pts | largest sub-model | total params red. | largest file red. | "
             "parallel b1 | parallel b64 | parity vs torch | load avg |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in runs.items():
        p = s["parity_vs_torch"]
        lines.append(f"| {name} | {s['split_top1']:.2f} / {s['original_top1']:.2f} | {-s['accuracy_drop_points']:+.2f} "
                     f"| {s['largest_device_fraction']:.3f}x params | {s['total_size_reduction']:.2f}x | "
                     f"{s['largest_device_file_reduction']:.1f}x (vs {s['original_file_bytes']} B FP32 ONNX) | "
                     f"{s['parallel_vs_original']['1']:.3f}x ({s['parallel_ms']['1']:.3f} / {s['original_ms']['1']:.3f} ms)"
                     f" | {s['parallel_vs_original']['64']:.3f}x | top-1 agree {100 * p['top1_agreement']:.1f} %, "
                     f"max Δ {p['max_abs']:.1e} | {s['loadavg']} |")
    for name, s in runs.items():
        lines += ["", f"## {name}: `{s['command']}`", "", "| device | params | file | branches | cost share | "
                  "size red. | latency b1 (ms) |", "|---|---|---|---|---|---|---|"]
        for d, v in s["per_device"].items():
            lines.append(f"| {d} | {v['params']} | {v['file_bytes']} B | {v['branches']}/24 | {v['cost_share']} | "
                         f"{v['size_reduction']}x | {v['latency_ms_b1']} |")
        lines += [""] + [f"- {'PASS' if ok else 'MISS'} {n}" for n, ok in checks(s)]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit-small")
    ap.add_argument("--devices", default="4")
    ap.add_argument("--bits", default="w8a8", help="precision of the second run ('' to skip it)")
    ap.add_argument("--results", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--artifacts", default="out/bench", help="where the split artifacts and work dir go")
    ap.add_argument("extra", nargs="*", help="extra `edgevit split` options after --, e.g. -- --epochs 3")
    args = ap.parse_args()
    results, arts = Path(args.results), Path(args.artifacts)
    results.mkdir(parents=True, exist_ok=True)
    tag = f"split-{args.model}-d{Path(args.devices).stem}"
    work = arts / f".work-{tag}"
    runs = {"fp32": run_split(args.model, args.devices, arts, tag, work, args.extra)}
    if args.bits:
        runs[f"{args.bits} int"] = run_split(args.model, args.devices, arts, f"{tag}-{args.bits}", work,
                                             [*args.extra, "--bits", args.bits, "--fmt", "int"])
    summary = {"model": args.model, "devices": args.devices, "targets": TARGETS, "runs": runs}
    (results / "split_bench.json").write_text(json.dumps(summary, indent=2) + "\n")
    (results / "split_bench.md").write_text(markdown(runs))
    print(markdown(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
