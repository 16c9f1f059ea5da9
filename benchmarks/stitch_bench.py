"""SN-Net on the bundled ViT family: the issue-10 numbers, measured in one run (run it on an idle machine).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/stitch_bench.py --out benchmarks/results/stitch

Runs `edgevit stitch` (LS init, stitch-only warm-up, joint training, every configuration on the 10k test set, ORT latency
on 1 thread, export), then checks the targets and writes results.json next to the artifact:
≥ 30 configurations; frontier from the tiny to the base anchor's MACs; frontier ≤ 1 point below the
tiny–base line; anchors lose ≤ 0.5 point; artifact ≤ 1.1× the anchors; set_config ≤ 1 ms.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch


def markdown(r: dict, configs: list[dict]) -> str:
    """README summary: the issue's checks, plus how far the stitched configurations sit from the
    straight tiny–base line (the frontier check alone passes trivially when only anchors are on it)."""
    anchors = sorted((c for c in configs if c["is_anchor"]), key=lambda c: c["macs"])
    lo, hi = anchors[0], anchors[-1]

    def gap(c):
        return c["top1"] - (lo["top1"] + (hi["top1"] - lo["top1"]) * (c["macs"] - lo["macs"]) / (hi["macs"] - lo["macs"]))
    gaps = [gap(c) for c in configs if not c["is_anchor"] and lo["macs"] <= c["macs"] <= hi["macs"]]
    a = r["args"]
    rows = ["| metric | value | target |", "|---|---|---|",
            f"| configurations evaluated | {r['num_configs']} | ≥ 30 |",
            "| anchors top-1 before → after joint training | " + ", ".join(
                f"{k} {r['anchors_top1_before'][k]:.2f} → {r['anchors_top1_after'][k]:.2f}" for k in r["anchors_top1_before"])
            + " | lose ≤ 0.5 pt |",
            f"| Pareto frontier | {', '.join(f['name'] for f in r['frontier'])} | spans tiny → base |",
            f"| stitched configs vs the tiny–base line (best / worst) | {max(gaps):+.2f} / {min(gaps):+.2f} pt | ≥ −1 pt along the frontier |",
            f"| frontier: stitched configs on it, largest drop below the line | {sum(not c['is_anchor'] for c in configs if c['pareto'])}, "
            f"{r['frontier_shortfall_points']:.2f} pt | ≤ 1 pt |",
            f"| shared-weight artifact vs sum of anchors | {r['onnx_vs_anchors']:.3f}× | ≤ 1.1× |",
            f"| `set_config` switch | {r['switch_us']:.1f} µs | ≤ 1 ms |",
            f"| wall time | {r['wall_s'] / 60:.0f} min ({r['threads']} thread(s); load average {r['load_avg'][0]:.1f} at the start, "
            f"{r['load_avg'][1]:.1f} at the end: ORT latencies are from a shared machine) | |", "",
            f"Training on {a['train_data']}: {a['warmup_epochs']} stitch-only warm-up epoch(s) (anchors frozen), then "
            f"{a['epochs']} joint epochs; stitching layers at lr {a['lr']}, anchors at lr × {a['anchor_lr_scale']}; "
            f"sampling {a['sampling']}, anchor share of joint steps "
            f"{a['anchor_prob'] if a['anchor_prob'] > 0 else 'as sampled'}; distillation from the largest anchor "
            f"{a['distill']}, anchors toward their originals {a['anchor_distill']}; evaluation on {a['eval_data']}. "
            "Plot: `benchmarks/results/stitch_pareto.png`; every configuration: `benchmarks/results/stitch_configs.md`."]
    if all(c["is_anchor"] for c in configs if c["pareto"]):
        rows.append("\n**Every stitched configuration is dominated by an anchor** after this short schedule, so the "
                    "frontier is the anchors alone and its check passes trivially; SN-Net trains for 100 epochs.")
    return "\n".join(rows) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results/stitch")
    ap.add_argument("--anchors", default="vit-tiny,vit-small,vit-base")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--train-data", default="fashion-mnist")
    ap.add_argument("--eval-data", default="fashion-mnist")
    ap.add_argument("--sampling", default="uniform", choices=["uniform", "flops"])
    ap.add_argument("--distill", type=float, default=0.5)
    ap.add_argument("--lr", type=float, default=2e-3, help="stitching layers' lr")
    ap.add_argument("--two-way", action="store_true")
    ap.add_argument("--warmup-epochs", type=int, default=1, help="stitch-only epochs before the joint ones")
    ap.add_argument("--anchor-lr-scale", type=float, default=0.025, help="anchors' lr as a fraction of --lr")
    ap.add_argument("--anchor-distill", type=float, default=1.0, help="anchor steps distil toward the original anchor")
    ap.add_argument("--anchor-prob", type=float, default=0.25, help="share of joint steps that train an anchor")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training/eval (ORT latency is 1 thread)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from edgevit.stitch.pipeline import StitchJob, run_stitch
    from edgevit.stitch.train import StitchRecipe
    out = Path(args.out)
    recipe = StitchRecipe(epochs=args.epochs, sampling=args.sampling, distill=args.distill, lr=args.lr,
                          warmup_epochs=args.warmup_epochs, anchor_lr_scale=args.anchor_lr_scale,
                          anchor_distill=args.anchor_distill, anchor_prob=args.anchor_prob)
    job = StitchJob(args.anchors.split(","), out / "artifact", recipe, two_way=args.two_way,
                    train_data=args.train_data, eval_data=args.eval_data, work_dir=out / "work")
    t0, load0 = time.time(), os.getloadavg()[0]
    manifest = run_stitch(job)
    wall = time.time() - t0
    load = [round(load0, 2), round(os.getloadavg()[0], 2)]
    m, configs = manifest["metrics"], manifest["configs"]
    front = sorted((c for c in configs if c["pareto"]), key=lambda c: c["macs"])
    anchors = sorted((c for c in configs if c["is_anchor"]), key=lambda c: c["macs"])
    drop = {n: round(m["anchors_top1_before"][n] - m["anchors_top1_after"][n], 2) for n in m["anchors_top1_before"]}
    checks = {
        "configs >= 30": m["num_configs"] >= 30,
        "frontier spans tiny..base MACs": front[0]["macs"] <= anchors[0]["macs"] and front[-1]["macs"] >= anchors[-1]["macs"],
        "frontier <= 1 pt below the tiny-base line": m["frontier_shortfall_points"] <= 1.0,
        "anchors lose <= 0.5 pt": max(drop.values()) <= 0.5,
        "artifact <= 1.1x anchors": m["onnx_vs_anchors"] <= 1.1,
        "switch <= 1 ms": m["switch_us"] <= 1000,
    }
    result = {"wall_s": round(wall, 1), "threads": args.threads, "load_avg": load, "args": vars(args), "checks": checks,
              "anchor_drop_points": drop, "frontier": [{k: c[k] for k in ("id", "name", "macs", "top1", "latency_ms")}
                                                       for c in front], **{k: m[k] for k in (
                  "num_configs", "anchors_top1_before", "anchors_top1_after", "frontier_shortfall_points",
                  "onnx_bytes", "anchors_fp32_bytes", "onnx_vs_anchors", "switch_us")}}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "stitch.md").write_text(markdown(result, configs))
    for k, v in checks.items():
        print(f"{'PASS' if v else 'FAIL'}  {k}")
    print(json.dumps({k: result[k] for k in ("num_configs", "anchors_top1_before", "anchors_top1_after",
                                             "frontier_shortfall_points", "onnx_vs_anchors", "switch_us", "wall_s")}))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
