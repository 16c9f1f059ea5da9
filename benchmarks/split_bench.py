"""ED-ViT split benchmark: `edgevit split MODEL --devices N` with default settings, then the issue's targets.

Run on an otherwise idle machine (latencies are measured inside the split run, one thread per model):

    .venv/bin/python benchmarks/split_bench.py --model vit-small --devices 4

Writes benchmarks/results/split-MODEL-dN/ (the artifact, with split_report.json) and
benchmarks/results/split-MODEL-dN.json (the summary below), and prints each target as PASS/MISS.
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit-small")
    ap.add_argument("--devices", default="4")
    ap.add_argument("--results", default=str(Path(__file__).parent / "results"))
    ap.add_argument("extra", nargs="*", help="extra `edgevit split` options after --, e.g. -- --epochs 3")
    args = ap.parse_args()
    tag = f"split-{args.model}-d{Path(args.devices).stem}"
    out = Path(args.results) / tag
    if out.exists():
        shutil.rmtree(out)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "edgevit.cli", "split", args.model, "--devices", args.devices, "--out", str(out),
           "--work-dir", str(Path(args.results) / f".work-{tag}"), *args.extra]
    t0 = time.time()
    subprocess.run(cmd, check=True, env=env)
    wall = time.time() - t0
    r = json.loads((out / "split_report.json").read_text())
    drop = r["accuracy"]["original_top1"] - r["accuracy"]["split_top1"]
    summary = {
        "command": " ".join(["edgevit", *cmd[3:]]), "split_wall_s": round(wall, 1),
        "original_top1": r["accuracy"]["original_top1"], "split_top1": r["accuracy"]["split_top1"],
        "accuracy_drop_points": round(drop, 2),
        "largest_device_fraction": r["size"]["largest_device_fraction"],
        "total_size_reduction": r["size"]["total_reduction"],
        "per_device_size_reduction": {d["device"]: d["size_reduction"] for d in r["devices"]},
        "parallel_vs_original": r["latency"]["parallel_vs_original"],
        "parallel_ms": r["latency"]["parallel_ms"], "original_ms": r["latency"]["original_ms"],
        "latency_method": r["latency"]["method"],
    }
    Path(args.results, f"{tag}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    checks = [("fused accuracy within 2 points", drop <= TARGETS["accuracy_drop_points"]),
              ("largest sub-model <= 0.25x params", summary["largest_device_fraction"] <= 0.25)]
    checks += [(f"parallel latency <= 0.4x (batch {b})", v <= 0.4) for b, v in summary["parallel_vs_original"].items()]
    for name, ok in checks:
        print(f"{'PASS' if ok else 'MISS'}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
