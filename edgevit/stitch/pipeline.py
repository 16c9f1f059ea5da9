"""`edgevit stitch` end to end: anchors → LS init → joint training → every config evaluated → artifact.

Also `load_stitched`, which rebuilds the StitchedModel from an artifact for run-time switching in torch.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgevit.stitch.evaluate import config_macs, evaluate_configs, pareto_front, plot_front
from edgevit.stitch.export import TORCH_FILE, export_stitched
from edgevit.stitch.init import least_squares_init
from edgevit.stitch.model import StitchedModel
from edgevit.stitch.train import StitchRecipe, train_stitched


@dataclass
class StitchJob:
    anchors: list[str]
    out: Path
    recipe: StitchRecipe
    kernel: int = 2
    stride: int = 1
    two_way: bool = False
    lora_rank: int = 0
    train_data: str = "fashion-mnist:20000"
    eval_data: str = "fashion-mnist"
    calib_images: int = 100
    work_dir: Path | None = None
    latency_iters: int = 50
    weights: list[str | None] | None = None
    device: str = "cpu"             # training device, resolved (see train.resolve_device)
    direction: str = "down"         # one-stitch routes large→small or small→large (v1) (see space.py)
    round_trip: bool = False        # + two-stitch routes back to the front anchor (see space.py)


def load_anchors(names: list[str], weights: list[str | None] | None = None):
    """(modules, metas) from the registry, in the order given."""
    from edgevit.models.registry import load_model
    weights = weights or [None] * len(names)
    loaded = [load_model(n, w) for n, w in zip(names, weights)]
    return [m for m, _ in loaded], [meta for _, meta in loaded]


def frontier_shortfall(rows: list[dict], front: list[int]) -> float:
    """Largest drop (points) of a frontier config below the straight line between the smallest and
    the largest anchor's (MACs, top-1); 0 when no frontier point lies below the line."""
    anchors = sorted((r for r in rows if r["is_anchor"]), key=lambda r: r["macs"])
    lo, hi = anchors[0], anchors[-1]
    worst = 0.0
    for i in front:
        r = rows[i]
        if lo["macs"] <= r["macs"] <= hi["macs"]:
            t = (r["macs"] - lo["macs"]) / (hi["macs"] - lo["macs"])
            worst = max(worst, lo["top1"] + t * (hi["top1"] - lo["top1"]) - r["top1"])
    return worst


def anchor_line(rows: list[dict], macs: float) -> float:
    """Top-1 on the piecewise-linear line through the anchors' (MACs, top-1), sorted by MACs, at `macs`
    (flat beyond the smallest and the largest anchor)."""
    pts = sorted((r["macs"], r["top1"]) for r in rows if r["is_anchor"])
    if macs <= pts[0][0]:
        return pts[0][1]
    for (m0, a0), (m1, a1) in zip(pts, pts[1:]):
        if macs <= m1:
            return a0 + (a1 - a0) * (macs - m0) / (m1 - m0)
    return pts[-1][1]


def frontier_stats(rows: list[dict]) -> dict:
    """The issue-23 shape of the frontier (rows carry macs, top1, is_anchor, pareto):
    - `stitched_on_frontier`: stitched configurations on it;
    - `max_gap_frac`: widest MACs gap between neighbouring frontier points inside the anchors' span,
      as a fraction of the anchors' MACs range (the frontier is judged as a menu of budgets: a wide gap
      leaves budgets that only a much smaller network serves);
    - `worst_line_delta`: min over frontier points of (top-1 − the piecewise-linear anchor line), in
      points (≥ −0.5 is the bar; positive means every frontier point is above the line);
    - `worst_line_delta_per_span`: the same between each pair of neighbouring anchors (which pair fails;
      0.0 for a span with no stitched frontier point)."""
    anchors = sorted((r for r in rows if r["is_anchor"]), key=lambda r: r["macs"])
    lo, hi = anchors[0]["macs"], anchors[-1]["macs"]
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["macs"])
    inside = [r["macs"] for r in front if lo <= r["macs"] <= hi]
    gaps = [b - a for a, b in zip(inside, inside[1:])]
    deltas = [r["top1"] - anchor_line(rows, r["macs"]) for r in front if lo <= r["macs"] <= hi]
    spans = [[r["top1"] - anchor_line(rows, r["macs"]) for r in front if a["macs"] < r["macs"] < b["macs"]]
             for a, b in zip(anchors, anchors[1:])]
    return {"stitched_on_frontier": sum(not r["is_anchor"] for r in front),
            "max_gap_frac": round(max(gaps) / (hi - lo), 4) if gaps and hi > lo else 1.0,
            "worst_line_delta": round(min(deltas), 3) if deltas else 0.0,
            "worst_line_delta_per_span": [round(min(d), 3) if d else 0.0 for d in spans]}


def switch_time_us(model: StitchedModel, n: int = 10000) -> float:
    """Mean wall time of one `set_config` call (µs)."""
    ids = np.arange(n) % model.num_configs
    t = time.perf_counter()
    for i in ids:
        model.set_config(int(i))
    return (time.perf_counter() - t) / n * 1e6


def write_table(path: Path, rows: list[dict], title: str) -> None:
    lines = [f"# {title}", "", "| id | config | MACs (M) | params (k) | top-1 % | ORT ms | Pareto |",
             "|---:|---|---:|---:|---:|---:|:-:|"]
    for r in rows:
        lat = "-" if r.get("latency_ms") is None else f"{r['latency_ms']:.3f}"
        lines.append(f"| {r['id']} | {r.get('anchor_name') or r['name']} | {r['macs'] / 1e6:.2f} | "
                     f"{r['params'] / 1e3:.1f} | {r['top1']:.2f} | {lat} | {'*' if r['pareto'] else ''} |")
    path.write_text("\n".join(lines) + "\n")


def run_stitch(job: StitchJob, progress: bool = True, keep_graphs: str = "frontier") -> dict:
    """The whole stage; returns the committed manifest."""
    from edgevit.data import calibration_tensor, load_data
    modules, metas = load_anchors(job.anchors, job.weights)
    meta = metas[0]
    order = sorted(range(len(modules)), key=lambda i: modules[i].embed_dim)
    names = [job.anchors[i] for i in order]
    x_eval, y_eval = load_data(job.eval_data, meta.preprocess, split="test", seed=job.recipe.seed)
    x_cal = calibration_tensor(f"fashion-mnist:{job.calib_images}", meta.preprocess, seed=job.recipe.seed) \
        if job.eval_data.startswith("fashion-mnist") else x_eval[:job.calib_images]
    model = StitchedModel(modules, job.kernel, job.stride, job.two_way, job.lora_rank, job.direction, job.round_trip)
    anchors_before = evaluate_configs(model.anchors_view(), x_eval, y_eval, progress=progress)
    ls_err = least_squares_init(model, x_cal)
    macs = config_macs(model, meta.input_shape)
    train_info = {}
    if job.recipe.epochs + job.recipe.warmup_epochs > 0:
        x_tr, y_tr = load_data(job.train_data, meta.preprocess, split="train", seed=job.recipe.seed)
        work = job.work_dir or job.out.parent / f".{job.out.name}.work"
        train_info = train_stitched(model, job.recipe, x_tr, y_tr, Path(work), macs=macs, progress=progress,
                                    device=job.device)
    top1 = evaluate_configs(model, x_eval, y_eval, progress=progress)
    front = set(pareto_front(macs, top1))
    rows = [{"id": i, "name": c.name, "route": c.to_dict(), "macs": macs[i], "params": model.config_params(c),
             "top1": round(top1[i], 2), "is_anchor": c.is_anchor, "pareto": i in front,
             "anchor_name": names[c.segments[0].anchor] if c.is_anchor else None}
            for i, c in enumerate(model.configs)]
    anchor_bytes = sum(4 * sum(p.numel() for p in a.parameters()) for a in model.anchors)
    metrics = {
        "eval_data": job.eval_data, "eval_images": len(y_eval), "num_configs": model.num_configs,
        "anchors_top1_before": dict(zip(names, [round(a, 2) for a in anchors_before])),
        "anchors_top1_after": {names[i]: rows[i]["top1"] for i in range(len(names))},
        "frontier_shortfall_points": round(frontier_shortfall(rows, sorted(front, key=lambda i: macs[i])), 3),
        "anchors_fp32_bytes": anchor_bytes, "switch_us": round(switch_time_us(model), 3),
        "ls_init_rel_error_max": round(max(ls_err.values()), 4), "train": train_info,
    }
    title = f"SN-Net over {', '.join(names)} on {job.eval_data} ({len(y_eval)} images)"

    def reports(d: Path, rs: list[dict]) -> None:
        plot_front(rs, sorted(front, key=lambda i: macs[i]), d / "pareto.png", title)
        write_table(d / "configs.md", rs, title)

    space = {"kernel": job.kernel, "stride": job.stride, "two_way": job.two_way, "lora_rank": job.lora_rank,
             "direction": job.direction, "round_trip": job.round_trip}
    manifest = export_stitched(model, job.out, rows=rows, input_shape=meta.input_shape,
                               preprocess=meta.preprocess.to_dict(), labels=list(meta.labels), anchors=names,
                               parity_inputs=x_eval[:32].numpy(), space=space, metrics=metrics,
                               latency_iters=job.latency_iters, progress=progress, before_commit=reports,
                               keep_graphs=keep_graphs)
    return manifest


def load_stitched(path: str | Path) -> tuple[StitchedModel, dict]:
    """The StitchedModel of an artifact (architecture from the manifest, weights from its safetensors)."""
    from safetensors.torch import load_file

    from edgevit.models import bundled
    from edgevit.models.registry import load_model
    from runtimes.artifact import load_artifact
    art = load_artifact(path)
    reload = art.manifest["model"]["reload"]
    mods = [bundled.BUNDLED[n]["factory"]() if n in bundled.BUNDLED else load_model(n)[0] for n in reload["anchors"]]
    model = StitchedModel(mods, reload["kernel"], reload["stride"], reload["two_way"], reload["lora_rank"],
                          reload.get("direction", "up"), reload.get("round_trip", False))
    model.load_state_dict(load_file(str(Path(path) / TORCH_FILE)))
    return model.eval(), json.loads((Path(path) / art.manifest["entry"]).read_text())
