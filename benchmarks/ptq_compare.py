"""Side-by-side PTQ: edgevit RTN / AdaRound / BRECQ vs onnxruntime's quantizer vs brevitas, one run.

The grid is benchmarks/grids/ptq_compare.yaml and it runs as `edgevit sweep` (edgevit.sweep: each cell a Ray
task in its own process with 1 torch thread; resumable); this script narrows the grid, runs the sweep and
writes the side-by-side tables. Every quantiser sees the same calibration images and is scored on the same
evaluation images (edgevit/sweep/cell.py):
- bundled vit-small and mobilenet-mini: calibration = Fashion-MNIST train subset (256), evaluation =
  a seeded subset of the Fashion-MNIST test set (--eval-limit), top-1 vs labels;
- mobilenetv2 (real ImageNet weights): the `photos` spec, 126 real photos (7 scenes × 18 views);
  calibration on the 63 even views and their mirror images (`photos+mirror`: 63 photos are too few for
  reconstruction, which over-fits them), evaluation on the 63 odd views: top-1 agreement with FP32, logit SQNR.
edgevit runs exactly what `edgevit quantize` runs (`edgevit.quantize`: default graph fixes
— BN folding, CLE over pairs and residual streams, bias correction on models with BN —, default
observers); the peers get the float model.
A peer that cannot express a precision gets a row with "n/a" and the reason.

    python benchmarks/ptq_compare.py [--models vit-small mobilenet-mini mobilenetv2] [--workers 2]
        [--eval-limit 2000] [--iters 400] [--mnv2-iters 400]   # writes benchmarks/results/ptq_compare.{json,md,png}

A cluster takes the same grid (`--address auto`); an interrupted run resumes from --sweep-dir. Earlier
runs' JSON files can still be joined: `python benchmarks/ptq_compare.py --combine a.json b.json`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

PRECISIONS = [("int", "w8a8"), ("int", "w4a8"), ("int", "w4a6"), ("fp4", "w4a8"), ("fp4", "w4a6"), ("mxfp4", "w4a8")]
GRID = Path(__file__).parent / "grids" / "ptq_compare.yaml"
RESULTS = Path(__file__).parent / "results"
BREVITAS_LABEL = {"rtn": "calib+bias-corr", "gptq": "calib+GPTQ+bias-corr"}


def narrow(grid, models, precisions, peers: bool, eval_limit: int | None, iters: int | None, mnv2_iters: int | None):
    """The grid's cells for these models and precisions, with the run's evaluation size and reconstruction steps."""
    cells = []
    for c in grid.cells:
        s = c.spec
        if s["model"] not in models or tuple(s["precision"].split(":")) not in precisions:
            continue
        if s["tool"] != "edgevit" and not peers:
            continue
        changes = {}
        if eval_limit is not None and s["eval_limit"] is not None:
            changes["eval_limit"] = eval_limit
        steps = mnv2_iters if s["model"] == "mobilenetv2" else iters
        if steps is not None and "reconstruction" in s["recipe"]:
            changes["recipe"] = {**s["recipe"], "reconstruction": {**s["recipe"]["reconstruction"], "iters": steps}}
        cells.append(c.replace(**changes) if changes else c)
    grid.cells = cells
    return grid


def to_rows(cells: list[dict], peers: bool) -> tuple[list[dict], dict]:
    """Sweep rows → this benchmark's rows (FP32 reference rows first, one n/a row per peer and precision)."""
    rows, notes, seen = [], {}, set()
    for m in dict.fromkeys(c["model"] for c in cells):
        ok = [c for c in cells if c["model"] == m and c.get("status") == "ok"]
        if ok:
            notes[m] = ok[0]["data"]
            fp = {"agreement": 100.0, "sqnr_db": float("inf")} | ({"top1": ok[0]["fp32_top1"]} if "fp32_top1" in ok[0] else {})
            rows.append({"model": m, "tool": "fp32", "method": "-", "fmt": "fp32", "bits": "w32a32", **fp,
                         "quantize_s": 0.0, "packed_bytes": ok[0]["fp32_bytes"], "na": None})
        for c in (c for c in cells if c["model"] == m):
            tool, method = c["tool"], c["method"]
            method = {"onnxruntime": f"quantize_static/{method}", "brevitas": BREVITAS_LABEL.get(method)}.get(tool, method)
            na = c.get("na") or (f"failed: {c.get('error')}" if c.get("status") == "failed" else None)
            if c.get("status") == "n/a":
                method = "quantize_static" if tool == "onnxruntime" else method
                if (m, tool, c["precision"]) in seen:
                    continue
                seen.add((m, tool, c["precision"]))
            row = {"model": m, "tool": tool, "method": method, "fmt": c["fmt"], "bits": c["bits"],
                   **{k: c[k] for k in ("top1", "agreement", "sqnr_db") if k in c and not na},
                   "quantize_s": c.get("quantize_s"), "packed_bytes": c.get("size_bytes"), "na": na,
                   "node_id": c.get("node_id"), "cell": c["key"]}
            if "units" in c:
                row["units"] = c["units"]
            if tool == "brevitas" and not na:
                row["scheme"] = "per-channel W, static per-tensor A" if c["fmt"] != "int" else "per-channel W, static A"
                row["as_edgevit_checkpoint"] = c["as_edgevit_checkpoint"]
            rows.append(row)
        if peers:
            rows.append({"model": m, "tool": "onnxruntime", "method": "MatMul4BitsQuantizer", "fmt": "int", "bits": "w4a8",
                         "quantize_s": None, "packed_bytes": None,
                         "na": "int4 weight-only for MatMul (activations stay float): not a W4A8 scheme; convs untouched"})
    return rows, notes


# -- main ---------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default=str(GRID))
    ap.add_argument("--models", nargs="+", default=["vit-small", "mobilenet-mini", "mobilenetv2"])
    ap.add_argument("--eval-limit", type=int, default=None, help="Fashion-MNIST evaluation images [grid: 2000]")
    ap.add_argument("--iters", type=int, default=None, help="reconstruction steps per unit [grid: 400, the CLI default]")
    ap.add_argument("--mnv2-iters", type=int, default=None,
                    help="steps per unit on MobileNetV2 [grid: 400; ~10 min per AdaRound run on one core]")
    ap.add_argument("--precisions", nargs="+", metavar="FMT:BITS",
                    help="only these precisions (e.g. int:w4a8 int:w8a8); default: all six")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--workers", type=int, default=None, help="cells in flight (default: every CPU)")
    ap.add_argument("--address", default=None, help="a running Ray cluster (auto|HOST:PORT); default: a local one")
    ap.add_argument("--sweep-dir", default=str(Path(tempfile.gettempdir()) / "edgevit-ptq-compare"),
                    help="the sweep's per-cell results (resumed when run again)")
    ap.add_argument("--combine", nargs="+", metavar="JSON", help="join earlier runs' results into --out; run nothing")
    ap.add_argument("--out", default=str(RESULTS / "ptq_compare.json"))
    args = ap.parse_args()
    keep = None if not args.precisions else {tuple(p.split(":", 1)) for p in args.precisions}
    precisions = [p for p in PRECISIONS if keep is None or p in keep]
    if keep is not None and len(precisions) != len(keep):
        ap.error(f"--precisions: choose from {', '.join(f'{f}:{b}' for f, b in PRECISIONS)}")
    if args.combine:
        parts = [json.loads(Path(f).read_text()) for f in args.combine]
        info = {**parts[0], "data": {m: n for p in parts for m, n in p["data"].items()},
                "total_s": sum(p["total_s"] for p in parts), "loadavg_end": [p["loadavg_end"] for p in parts],
                "iters_mobilenetv2": next((p["iters_mobilenetv2"] for p in parts if "mobilenetv2" in p["data"]),
                                          parts[0]["iters_mobilenetv2"])}
        rows = {(r["model"], r["tool"], r["method"], r["fmt"], r["bits"]): r for p in parts for r in p["results"]}
        write(Path(args.out), list(rows.values()), {k: v for k, v in info.items() if k != "results"})
        return
    from edgevit.sweep import load_grid, sweep
    grid = narrow(load_grid(args.grid), set(args.models), set(precisions), not args.no_peers, args.eval_limit,
                  args.iters, args.mnv2_iters)
    t_start = time.perf_counter()
    res = sweep(grid, args.sweep_dir, address=args.address, workers=args.workers)
    rows, notes = to_rows(res["cells"], not args.no_peers)
    iters = {c["model"]: c["spec"]["recipe"]["reconstruction"]["iters"] for c in res["cells"]
             if "reconstruction" in c["spec"]["recipe"]}
    meta_info = {"benchmark": "ptq_compare", "grid": str(args.grid), "sweep_dir": args.sweep_dir, "data": notes,
                 "seed": 0, "iters_per_unit": next((v for m, v in iters.items() if m != "mobilenetv2"), None),
                 "iters_mobilenetv2": iters.get("mobilenetv2"), "threads": 1, "workers": res["workers"],
                 "ray_nodes": res["ray_nodes"], "cells_run": res["cells_run"], "cells_reused": res["cells_reused"],
                 "torch": torch.__version__, "machine": platform.machine(), "loadavg_end": os.getloadavg(),
                 "total_s": time.perf_counter() - t_start,
                 "note": "2-core machine shared with other jobs: wall times are inflated, accuracy/size are not"}
    write(Path(args.out), rows, meta_info)


def write(out: Path, rows: list[dict], meta_info: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**meta_info, "results": rows}, indent=2, default=float))
    out.with_suffix(".md").write_text(markdown(rows, meta_info))
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out} (+ .md, .png); {meta_info['total_s']:.0f} s of benchmark time")


def _cell(r) -> str:
    if r is None:
        return "–"
    t1 = f"top-1 {r['top1']:.2f} · " if "top1" in r else ""
    return f"{r['method']}: {t1}agree {r['agreement']:.1f} · **{r['sqnr_db']:.1f} dB**"


def summary(rows) -> list[str]:
    """Per model and precision, each tool's best row by logit SQNR — the stable measure: on 2000 test
    images a top-1 difference under ~0.6 points is within noise, and on MobileNetV2's 63 photos one image
    is 1.6 points of agreement."""
    lines = ["| model | precision | edgevit | onnxruntime | brevitas |", "|---|---|---|---|---|"]
    for m in dict.fromkeys(r["model"] for r in rows):
        for fam, bits in PRECISIONS:
            best = {}
            for tool in ("edgevit", "onnxruntime", "brevitas"):
                cands = [r for r in rows if (r["model"], r["tool"], r["fmt"], r["bits"]) == (m, tool, fam, bits)
                         and not r["na"]]
                best[tool] = max(cands, key=lambda r: r["sqnr_db"], default=None)
            if best["edgevit"] is not None:
                lines.append(f"| {m} | {fam} {bits} | " + " | ".join(_cell(best[t]) for t in best) + " |")
    return lines


def markdown(rows, info) -> str:
    lines = ["# PTQ side by side", "", *(f"- {m}: {n}" for m, n in info["data"].items()),
             f"- reconstruction: {info['iters_per_unit']} steps per unit (MobileNetV2: {info['iters_mobilenetv2']}, batch 8); "
             f"1 torch thread; {info['note']}", "",
             "Best of each tool per precision (by logit SQNR against FP32; – = the tool cannot express it):", "",
             *summary(rows), "", "<details><summary>Every row</summary>", "",
             "| model | tool | method | fmt | bits | top-1 % | agree % | SQNR dB | size | time s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["na"]:
            lines.append(f"| {r['model']} | {r['tool']} | {r['method']} | {r['fmt']} | {r['bits']} | n/a | n/a | n/a | "
                         f"n/a | {r['na']} |")
            continue
        t1 = f"{r['top1']:.2f}" if "top1" in r else "-"
        sq = "inf" if r["sqnr_db"] == float("inf") else f"{r['sqnr_db']:.1f}"
        lines.append(f"| {r['model']} | {r['tool']} | {r['method']} | {r['fmt']} | {r['bits']} | {t1} | "
                     f"{r['agreement']:.1f} | {sq} | {r['packed_bytes'] / 1e3:.0f} kB | {r['quantize_s']:.1f} |")
    return "\n".join([*lines, "", "</details>"]) + "\n"


def plot(rows, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 7), squeeze=False)
    for ax, m in zip(axes[0], models):
        sub = [r for r in rows if r["model"] == m and not r["na"] and r["tool"] != "fp32"]
        key = "top1" if any("top1" in r for r in sub) else "agreement"
        labels = [f"{r['fmt']} {r['bits']} · {r['tool']} {r['method']}" for r in sub]
        colors = {"edgevit": "tab:blue", "onnxruntime": "tab:orange", "brevitas": "tab:green"}
        ax.barh(range(len(sub)), [r[key] for r in sub], color=[colors[r["tool"]] for r in sub])
        ax.set_yticks(range(len(sub)), labels, fontsize=6)
        fp = next(r for r in rows if r["model"] == m and r["tool"] == "fp32")
        ax.axvline(fp[key], color="k", ls="--", lw=0.8)
        lo = min(r[key] for r in sub)
        ax.set_xlim(max(0, lo - 2), 100 if key == "agreement" else fp[key] + 2)
        ax.set_title(f"{m}: {'top-1 %' if key == 'top1' else 'top-1 agreement with FP32 %'}")
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=130)


if __name__ == "__main__":
    main()
