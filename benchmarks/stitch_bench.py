"""SN-Net on the bundled ViT family: the issue-10 and issue-23 numbers, measured in one run (run it on an idle machine).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/stitch_bench.py --threads 2   # the benchmark (≈ 45 min, 2 threads)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/stitch_bench.py --ablation    # the ablation table (≈ 20 min)

Runs `edgevit stitch` (LS init, stitch-only warm-up, joint training, every configuration on the 10k test set, ORT
latency on 1 thread, export) into --out (work dir + artifact, resumable), checks the targets, and copies
stitch.json, stitch.md, stitch_configs.md and stitch_pareto.png into --results. Issue 23: ≥ 8 stitched
configurations on the MACs/top-1 frontier, no gap between neighbouring frontier points wider than 25 % of the
anchors' MACs range, every frontier point ≥ the piecewise-linear line through the anchors − 0.5 pt, each anchor
within 0.5 pt of its original top-1 (either way: an anchor that gains moves the line). Issue 10: ≥ 30
configurations, artifact ≤ 1.1× the anchors, set_config ≤ 1 ms. (Issue 10's "frontier from the tiny to the base
anchor's MACs" is true by construction at the low end, the smallest anchor being the cheapest configuration,
and at the top it failed only when a stitched configuration beat vit-base on both axes; the table says when
that happens instead of failing it.)

The defaults (why each): large→small one-stitch routes (`--direction down`: a small→large route cannot know more
than its small front encoded, so on this family those stitches stay under vit-small however long they train);
SN-Netv2's FLOPs-grouped sampling with buckets of equal MACs ratio (`log-flops`: each anchor pair of this
geometric family gets half the stitched steps; equal-width buckets gave the tiny↔small routes a quarter);
distillation 1.0 from vit-base, the largest anchor, for every route (SN-Net's teacher; distilling the
tiny↔small routes from vit-small instead saved time but left them further under the line); anchors
fine-tuned as a family at lr × 0.1 with self-distillation on a quarter of the joint steps; 2 stitch-only
warm-up epochs, then 45 joint epochs over the 60k training images.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch


def markdown(r: dict, configs: list[dict]) -> str:
    """README summary: the issue-23 checks (stitched configurations on the frontier, its widest gap, its
    distance to the piecewise-linear line through the anchors, the anchors' drop), the issue-10 ones, and
    how far the stitched configurations sit from that line (best / worst)."""
    from edgevit.stitch.pipeline import anchor_line
    gaps = [c["top1"] - anchor_line(configs, c["macs"]) for c in configs if not c["is_anchor"]]
    a, f = r["args"], r["frontier_stats"]
    rows = ["| metric | value | target |", "|---|---|---|",
            f"| stitched configurations on the Pareto frontier | {f['stitched_on_frontier']} | ≥ 8 |",
            f"| widest MACs gap between neighbouring frontier points | {100 * f['max_gap_frac']:.1f} % of the anchors' range "
            f"| ≤ 25 % |",
            f"| frontier vs the piecewise-linear line through the anchors (worst point) | {f['worst_line_delta']:+.2f} pt"
            + (f" (per anchor pair: {_signed(f['worst_line_delta_per_span'])})"
               if "worst_line_delta_per_span" in f else "") + " | ≥ −0.5 pt |",
            "| anchors top-1 before → after joint training | " + ", ".join(
                f"{k} {r['anchors_top1_before'][k]:.2f} → {r['anchors_top1_after'][k]:.2f}" for k in r["anchors_top1_before"])
            + " | within ±0.5 pt |",
            f"| configurations evaluated | {r['num_configs']} | ≥ 30 |",
            f"| Pareto frontier | {', '.join(f['name'] for f in r['frontier'])}{_dominated(r)} | spans tiny → base |",
            f"| stitched configs vs the anchor line (best / worst) | {max(gaps):+.2f} / {min(gaps):+.2f} pt | |",
            f"| shared-weight artifact vs sum of anchors | {r['onnx_vs_anchors']:.3f}× | ≤ 1.1× |",
            f"| `set_config` switch | {r['switch_us']:.1f} µs | ≤ 1 ms |",
            f"| wall time | {r['wall_s'] / 60:.0f} min, training {r['train_s'] / 60:.0f} min"
            + (f" (resumed: {r['trained_before_s'] / 60:.0f} min of it trained by earlier runs, counted here; "
               f"this run {r['this_run_s'] / 60:.0f} min)" if r.get("trained_before_s")
               else f" (resumed: trained by an earlier run, whose training time this counts; this run "
               f"{r['this_run_s'] / 60:.0f} min re-evaluated and re-exported)" if r.get("resumed") else "")
            + f" ({r['threads']} thread(s); "
            f"load average {r['load_avg'][0]:.1f} at the start, {r['load_avg'][1]:.1f} at the end: ORT latencies are "
            "from a shared machine) | ≤ 3 h on 2 cores |", "",
            f"Training on {a['train_data']}: {a['warmup_epochs']} stitch-only warm-up epoch(s) (anchors frozen), then "
            f"{a['epochs']} joint epochs; stitching layers at lr {a['lr']}, anchors at lr × {a['anchor_lr_scale']}; "
            f"sampling {a['sampling']}, anchor share of joint steps "
            f"{a['anchor_prob'] if a['anchor_prob'] > 0 else 'as sampled'}; distillation from the largest anchor "
            f"{a['distill']}, anchors toward their originals {a['anchor_distill']}{RECIPE_EXTRA(a)}; evaluation on "
            f"{a['eval_data']}. Plot: `benchmarks/results/stitch_pareto.png`; every configuration: "
            "`benchmarks/results/stitch_configs.md`."]
    if all(c["is_anchor"] for c in configs if c["pareto"]):
        rows.append("\n**Every stitched configuration is dominated by an anchor**, so the frontier is the anchors alone.")
    return "\n".join(rows) + "\n"


def _signed(points) -> str:
    """Points per anchor or anchor pair, as the tables print them: `+0.10 / -0.33`."""
    return " / ".join(f"{d:+.2f}" for d in points)


def _dominated(r: dict) -> str:
    """When a stitched configuration beats the largest anchor on both axes, say so (the frontier then ends
    on it: it serves the largest anchor's budget)."""
    b = r.get("largest_anchor_dominated_by")
    if not b:
        return ""
    return (f" (ends on {b['name']}: {b['top1']:.2f} % at {b['macs'] / 1e6:.1f}M MACs, more accurate than the largest "
            f"anchor's {b['anchor_top1']:.2f} % at {b['anchor_macs'] / 1e6:.1f}M, which it dominates)")


def recipe_from_args(args: argparse.Namespace, **over):
    from edgevit.stitch.train import StitchRecipe
    kw = {k: getattr(args, k) for k in RECIPE_KEYS}
    kw.update(over)
    return StitchRecipe(**kw)


RECIPE_KEYS = ("epochs", "sampling", "distill", "distill_teacher", "lr", "warmup_epochs", "anchor_lr_scale",
               "anchor_distill", "anchor_prob")


def RECIPE_EXTRA(a: dict) -> str:
    """The recipe keys the issue-10 summary did not name."""
    route = {"up": "small→large", "down": "large→small"}[a.get("direction", "up")]
    return (f" (teacher: the {'route' + chr(39) + 's largest' if a.get('distill_teacher') == 'route' else 'largest'} "
            f"anchor); one-stitch routes {route}{', two-way' if a.get('two_way') else ''}"
            f"{', plus the round trips ' + route + '→' + route.split('→')[0] if a.get('round_trip') else ''}")


# One row per ingredient, added in this order to the previous row's recipe (same seed, same data).
ABLATION = [
    ("issue-10 defaults (uniform sampling, distil 0.5 from vit-base, anchors at lr × 0.025)",
     dict(sampling="uniform", distill=0.5, distill_teacher="largest", anchor_lr_scale=0.025)),
    ("+ FLOPs-grouped sampling (SN-Netv2)", dict(sampling="flops")),
    ("+ distillation weight 1.0", dict(distill=1.0)),
    ("+ anchors fine-tuned as a family (lr × 0.25, self-distilled)", dict(anchor_lr_scale=0.25)),
    ("+ teacher = the largest anchor of the route", dict(distill_teacher="route")),
    ("+ large→small stitching (`--direction down`, SN-Netv2's reverse stitches)", dict(direction="down")),
    ("+ FLOPs buckets of equal MACs ratio (`--sampling log-flops`: each anchor pair gets the same share)",
     dict(sampling="log-flops")),
    ("+ teacher = vit-base, the largest anchor, for every route again (`--distill-teacher largest`)",
     dict(distill_teacher="largest")),
    ("+ round trips large→small→large (`--round-trip`: the large anchor's head, a middle run of the small one's "
     "blocks)", dict(round_trip=True)),
]


def ablation(args: argparse.Namespace) -> int:
    """The ablation table at a short schedule (`--ablation-train`, `--ablation-epochs`, evaluation on
    `--ablation-eval`): no export, every configuration evaluated, the issue-23 frontier numbers per row."""
    from edgevit.data import calibration_tensor, load_data
    from edgevit.stitch.evaluate import config_macs, evaluate_configs, pareto_front
    from edgevit.stitch.init import least_squares_init
    from edgevit.stitch.model import StitchedModel
    from edgevit.stitch.pipeline import frontier_stats, load_anchors
    from edgevit.stitch.train import train_stitched
    out = Path(args.out) / "ablation"
    results, over = [], {}
    for label, change in ABLATION:
        over = {**over, **change}
        row_file = out / f"row{len(results)}.json"
        if row_file.exists() and json.loads(row_file.read_text())["recipe"] == over:    # resume a finished row
            results.append(json.loads(row_file.read_text()))
            continue
        space = {k: over[k] for k in ("two_way", "direction", "round_trip") if k in over}
        recipe = recipe_from_args(args, epochs=args.ablation_epochs, warmup_epochs=args.ablation_warmup,
                                  **{k: v for k, v in over.items() if k not in space})
        modules, metas = load_anchors(args.anchors.split(","))
        meta = metas[0]
        x_ev, y_ev = load_data(args.ablation_eval, meta.preprocess, split="test", seed=recipe.seed)
        model = StitchedModel(modules, **space)
        before = evaluate_configs(model.anchors_view(), x_ev, y_ev, progress=False)
        least_squares_init(model, calibration_tensor("fashion-mnist:100", meta.preprocess, seed=recipe.seed))
        macs = config_macs(model, meta.input_shape)
        x_tr, y_tr = load_data(args.ablation_train, meta.preprocess, split="train", seed=recipe.seed)
        t0 = time.time()
        work = out / f"row{len(results)}.work"
        if work.exists():
            shutil.rmtree(work)
        train_stitched(model, recipe, x_tr, y_tr, work, macs=macs, progress=False)
        train_s = time.time() - t0
        top1 = evaluate_configs(model, x_ev, y_ev, progress=False)
        front = set(pareto_front(macs, top1))
        rows = [{"macs": macs[i], "top1": top1[i], "is_anchor": c.is_anchor, "pareto": i in front}
                for i, c in enumerate(model.configs)]
        n = len(before)
        results.append({"row": label, "recipe": over.copy(), "configs": model.num_configs,
                        "train_s": round(train_s, 1), **frontier_stats(rows),
                        "anchor_drop_points": [round(b - a, 2) for b, a in zip(before, top1[:n])],
                        "best_stitched_vs_line": round(max(r["top1"] - _line(rows, r["macs"]) for r in rows[n:]), 2)})
        row_file.write_text(json.dumps(results[-1]) + "\n")
        print(json.dumps(results[-1]), flush=True)
    full = Path(args.results) / "stitch.json"
    if full.exists():       # the benchmark's own run: the last ingredient, the schedule
        r = json.loads(full.read_text())
        a = r["args"]
        rows = r.get("frontier_stats")
        if rows is not None:
            recipe = {k: a[k] for k in RECIPE_KEYS + ("direction", "round_trip") if k in a}
            other = ", ".join(f"{k} {v}" for k, v in recipe.items()
                              if k in over and over[k] != v)         # what else differs from the row above
            results.append({"row": f"+ the benchmark's schedule ({a['warmup_epochs']} + {a['epochs']} epochs on "
                                   f"{a['train_data']}{'; ' + other if other else ''}; evaluated on "
                                   f"{r.get('eval_images', 10000)} test images: `stitch.json`)", "recipe": recipe,
                            "configs": r["num_configs"], "train_s": r["train_s"], **rows,
                            "anchor_drop_points": list(r["anchor_drop_points"].values()),
                            "best_stitched_vs_line": r.get("best_stitched_vs_line", _best_vs_line(Path(args.out))),
                            **_per_span(Path(args.out), rows)})
    cap = (f"Ablation at a SHORT schedule ({args.ablation_train} training images, {args.ablation_warmup} stitch-only + "
           f"{args.ablation_epochs} joint epoch(s), evaluation on {args.ablation_eval} test images, seed 0, 1 thread), "
           "not the benchmark's, except the last row when present (the benchmark's defaults, from `stitch.json`); "
           "each row adds one ingredient to the row above. The worst point per anchor pair is recorded from the "
           "log-flops row on ('-' before). Anchors' drop: vit-tiny / vit-small / vit-base, "
           "positive = lost. With no stitched configuration on the frontier its worst point is an anchor (0 by "
           "definition). 2,000 test images put about ±0.7 pt of noise on one configuration's top-1. Training "
           "seconds include the teacher forwards.")
    lines = [cap, "", "| ingredient | configs | stitched on frontier | widest gap (% of range) | worst frontier point vs line (pt) "
             "| … tiny↔small / small↔base | best stitched vs line (pt) | anchors' drop (pt) | training s |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in results:
        spans = r.get("worst_line_delta_per_span")
        lines.append(f"| {r['row']} | {r.get('configs', 71)} | {r['stitched_on_frontier']} | {100 * r['max_gap_frac']:.0f} | "
                     f"{r['worst_line_delta']:+.2f} | {_signed(spans) if spans else '-'} | "
                     f"{r['best_stitched_vs_line']:+.2f} | "
                     f"{_signed(r['anchor_drop_points'])} | {r['train_s']:.0f} |")
    res = Path(args.results)
    (res / "stitch_ablation.md").write_text("\n".join(lines) + "\n")
    (res / "stitch_ablation.json").write_text(json.dumps({"caption": cap, "rows": results}, indent=2) + "\n")
    return 0


def summarise(args: argparse.Namespace) -> int:
    """The full-schedule ablation: one row per finished benchmark run (`--summarise OUT ...`, in order), each
    read from its own results.json, artifact index and checkpoint; a row's label is what its arguments change
    from the row above. Training minutes come from the checkpoint's history (all the runs that trained it)."""
    from edgevit.stitch.train import trained_seconds
    keys = RECIPE_KEYS + ("direction", "round_trip", "two_way", "train_data")
    rows, prev = [], None
    for d in map(Path, args.summarise):
        r = json.loads((d / "results.json").read_text())
        a = {"round_trip": False, "two_way": False, **r["args"]}      # runs from before a flag existed: its default
        if prev is None:
            label = "start: " + ", ".join(f"{k} {a.get(k)}" for k in ("sampling", "distill_teacher", "epochs"))
        else:
            label = "+ " + ", ".join(f"{k} {a.get(k)}" for k in keys if a.get(k) != prev.get(k))
        ckpt = d / "work" / "last.pt"
        train_s = trained_seconds(torch.load(ckpt, weights_only=False, map_location="cpu")["history"]) \
            if ckpt.is_file() else r["train_s"]
        index = json.loads((d / "artifact" / "configs.json").read_text())
        largest = max((c for c in index if c["is_anchor"]), key=lambda c: c["macs"])
        stats = {**r["frontier_stats"], **_per_span(d, r["frontier_stats"])}
        rows.append({"row": label, "dir": str(d), "args": {k: a.get(k) for k in keys}, "configs": r["num_configs"],
                     **stats, "best_stitched_vs_line": r.get("best_stitched_vs_line", _best_vs_line(d)),
                     "anchor_drop_points": list(r["anchor_drop_points"].values()),
                     "largest_anchor_on_frontier": largest["pareto"], "train_s": train_s, "threads": r["threads"],
                     "onnx_vs_anchors": r["onnx_vs_anchors"]})
        prev = a
    cap = ("Ablation at the benchmark's FULL schedule (2 stitch-only + N joint epochs on the 60k training images, "
           "10,000 test images, seed 0), one row per run of this script, each changing the arguments named from "
           "the row above (`benchmarks/stitch_bench.py --summarise DIR ...`). 10,000 test images put about "
           "±0.3 pt of noise on one configuration's top-1, and the worst frontier point is a minimum over 10–15 "
           "of them. Anchors' drop: vit-tiny / vit-small / vit-base, positive = lost. Training minutes on the "
           "threads named (runs beside other jobs are slower).")
    lines = [cap, "", "| run | stitched on frontier | widest gap (% of range) | worst frontier point vs line (pt) "
             "| … tiny↔small / small↔base | best stitched vs line (pt) | anchors' drop (pt) | vit-base on the frontier "
             "| artifact vs anchors | training min (threads) |", "|---|---:|---:|---:|---:|---:|---|:-:|---:|---:|"]
    for r in rows:
        spans = r.get("worst_line_delta_per_span")
        lines.append(f"| {r['row']} | {r['stitched_on_frontier']} | {100 * r['max_gap_frac']:.0f} | "
                     f"{r['worst_line_delta']:+.2f} | {_signed(spans) if spans else '-'} | "
                     f"{r['best_stitched_vs_line']:+.2f} | {_signed(r['anchor_drop_points'])} | "
                     f"{'yes' if r['largest_anchor_on_frontier'] else 'no (dominated)'} | "
                     f"{r['onnx_vs_anchors']:.3f}× | {r['train_s'] / 60:.0f} ({r['threads']}) |")
    res = Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    (res / "stitch_full_ablation.md").write_text("\n".join(lines) + "\n")
    (res / "stitch_full_ablation.json").write_text(json.dumps({"caption": cap, "rows": rows}, indent=2) + "\n")
    print("\n".join(lines))
    return 0


def _per_span(out: Path, stats: dict) -> dict:
    """The worst frontier point per anchor pair, from the benchmark's artifact when its results.json
    predates the number."""
    if "worst_line_delta_per_span" in stats:
        return {}
    index = out / "artifact" / "configs.json"
    if not index.exists():
        return {}
    from edgevit.stitch.pipeline import frontier_stats
    return {"worst_line_delta_per_span": frontier_stats(json.loads(index.read_text()))["worst_line_delta_per_span"]}


def _best_vs_line(out: Path) -> float:
    """Best stitched configuration vs the anchor line, from the benchmark's artifact (results.json written
    before it recorded this number)."""
    index = out / "artifact" / "configs.json"
    if not index.exists():
        return float("nan")
    rows = json.loads(index.read_text())
    return round(max(r["top1"] - _line(rows, r["macs"]) for r in rows if not r["is_anchor"]), 2)


def _line(rows, macs):
    from edgevit.stitch.pipeline import anchor_line
    return anchor_line(rows, macs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out/stitch-bench", help="work dir and artifact (not committed)")
    ap.add_argument("--results", default="benchmarks/results",
                    help="where stitch.json, stitch.md, stitch_configs.md and stitch_pareto.png are copied")
    ap.add_argument("--anchors", default="vit-tiny,vit-small,vit-base")
    ap.add_argument("--epochs", type=int, default=45)
    ap.add_argument("--train-data", default="fashion-mnist")
    ap.add_argument("--eval-data", default="fashion-mnist")
    ap.add_argument("--sampling", default="log-flops", choices=["uniform", "flops", "log-flops"])
    ap.add_argument("--distill", type=float, default=1.0)
    ap.add_argument("--distill-teacher", default="largest", choices=["largest", "route"])
    ap.add_argument("--lr", type=float, default=2e-3, help="stitching layers' lr")
    ap.add_argument("--two-way", action="store_true")
    ap.add_argument("--round-trip", action="store_true",
                    help="add the two-stitch routes back to the front anchor (large→small→large with --direction down)")
    ap.add_argument("--direction", default="down", choices=["up", "down"], help="one-stitch routes small→large or large→small")
    ap.add_argument("--warmup-epochs", type=int, default=2, help="stitch-only epochs before the joint ones")
    ap.add_argument("--anchor-lr-scale", type=float, default=0.1, help="anchors' lr as a fraction of --lr")
    ap.add_argument("--anchor-distill", type=float, default=1.0, help="anchor steps distil toward the original anchor")
    ap.add_argument("--anchor-prob", type=float, default=0.25, help="share of joint steps that train an anchor")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training/eval (ORT latency is 1 thread)")
    ap.add_argument("--ablation", action="store_true", help="write the ablation table instead (short schedule)")
    ap.add_argument("--summarise", nargs="+", metavar="OUT",
                    help="write the full-schedule ablation table from these finished runs' --out folders, in order")
    ap.add_argument("--ablation-train", default="fashion-mnist:20000")
    ap.add_argument("--ablation-eval", default="fashion-mnist:2000")
    ap.add_argument("--ablation-epochs", type=int, default=2)
    ap.add_argument("--ablation-warmup", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.ablation:
        return ablation(args)
    if args.summarise:
        return summarise(args)

    from edgevit.stitch.pipeline import StitchJob, frontier_stats, run_stitch
    out = Path(args.out)
    recipe = recipe_from_args(args)
    job = StitchJob(args.anchors.split(","), out / "artifact", recipe, two_way=args.two_way, direction=args.direction,
                    round_trip=args.round_trip,
                    train_data=args.train_data, eval_data=args.eval_data, work_dir=out / "work")
    from edgevit.stitch.train import trained_seconds
    ckpt = out / "work" / "last.pt"            # a resumed run: the training done before it comes from its history
    trained_before = trained_seconds(torch.load(ckpt, weights_only=False, map_location="cpu")["history"]) \
        if ckpt.is_file() else 0.0
    t0, load0 = time.time(), os.getloadavg()[0]
    manifest = run_stitch(job)
    wall = time.time() - t0
    load = [round(load0, 2), round(os.getloadavg()[0], 2)]
    m, configs = manifest["metrics"], manifest["configs"]
    hist = m.get("train", {}).get("history") or [{}]
    front = sorted((c for c in configs if c["pareto"]), key=lambda c: c["macs"])
    anchors = sorted((c for c in configs if c["is_anchor"]), key=lambda c: c["macs"])
    drop = {n: round(m["anchors_top1_before"][n] - m["anchors_top1_after"][n], 2) for n in m["anchors_top1_before"]}
    stats = frontier_stats(configs)
    checks = {
        "stitched configs on frontier >= 8": stats["stitched_on_frontier"] >= 8,
        "frontier gap <= 25% of anchors' MACs range": stats["max_gap_frac"] <= 0.25,
        "frontier >= anchor line - 0.5 pt": stats["worst_line_delta"] >= -0.5,
        "anchors within 0.5 pt of their original top-1": max(map(abs, drop.values())) <= 0.5,
        "configs >= 30": m["num_configs"] >= 30,
        "artifact <= 1.1x anchors": m["onnx_vs_anchors"] <= 1.1,
        "switch <= 1 ms": m["switch_us"] <= 1000,
    }
    # The frontier always starts at the cheapest configuration, the smallest anchor; at the top a stitched
    # configuration may beat the largest anchor on both axes (then it, not the anchor, serves that budget)
    top = front[-1]
    beats = None if top["is_anchor"] else {"name": top["name"], "macs": top["macs"], "top1": top["top1"],
                                           "anchor_top1": anchors[-1]["top1"], "anchor_macs": anchors[-1]["macs"]}
    from edgevit.stitch.pipeline import anchor_line
    best = max(c["top1"] - anchor_line(configs, c["macs"]) for c in configs if not c["is_anchor"])
    train_s = trained_seconds(hist)
    result = {"wall_s": round(wall + trained_before, 1), "train_s": train_s,
              "resumed": trained_before > 0, "trained_before_s": trained_before, "this_run_s": round(wall, 1),
              "threads": args.threads,
              "eval_images": m["eval_images"], "best_stitched_vs_line": round(best, 2),
              "load_avg": load, "args": vars(args), "checks": checks, "frontier_stats": stats,
              "anchor_drop_points": drop, "largest_anchor_dominated_by": beats, "frontier": [{k: c[k] for k in ("id", "name", "macs", "top1", "latency_ms")}
                                                       for c in front], **{k: m[k] for k in (
                  "num_configs", "anchors_top1_before", "anchors_top1_after", "frontier_shortfall_points",
                  "onnx_bytes", "anchors_fp32_bytes", "onnx_vs_anchors", "switch_us")}}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "stitch.md").write_text(markdown(result, configs))
    res = Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    for src, dst in ((out / "results.json", "stitch.json"), (out / "stitch.md", "stitch.md"),
                     (out / "artifact" / "configs.md", "stitch_configs.md"),
                     (out / "artifact" / "pareto.png", "stitch_pareto.png")):
        if src.exists():
            shutil.copyfile(src, res / dst)
    for k, v in checks.items():
        print(f"{'PASS' if v else 'FAIL'}  {k}")
    print(json.dumps({k: result[k] for k in ("num_configs", "frontier_stats", "anchors_top1_before", "anchors_top1_after",
                                             "onnx_vs_anchors", "switch_us", "wall_s", "train_s")}))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
