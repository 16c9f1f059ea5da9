"""`edgevit analyze`: per-layer sensitivity; plus the graph fixes and mixed-precision search `quantize` uses.

The graph fixes (BN folding, CLE, bias correction, BN re-estimation) and `--bits auto` live in quant/;
this module decides their defaults per model, drives them with edgevit's data and draws the plots.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import click
import torch
from tqdm import tqdm

from edgevit.commands.common import console, load, model_options, overwrite_option, print_table
from edgevit.errors import UsageError

DEFAULT_CANDIDATES = "int:w8a8,int:w6a8,int:w4a8,int:w3a8,int:w2a8"
_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3}


def parse_size(text: str) -> float:
    """`1.2MB`, `800kB`, `3MiB`, `123456` → bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmg]i?b|b)?\s*", text.lower())
    if not m:
        raise UsageError(f"bad size {text!r}; write e.g. 1.2MB, 800kB or 3MiB")
    return float(m.group(1)) * _UNITS[m.group(2) or "b"]


# ------------------------------------------------------------------ graph fixes: defaults and driver
def graph_defaults(fmodel, fold_bn, equalize, bias_correction, bn_reestimate, method: str = "rtn") -> dict:
    """Resolve None ("auto") per model and method: folding and CLE help CNNs with BN (MobileNet family:
    depthwise ranges). Bias correction needs the folded biases and follows plain rounding only: AdaRound and
    BRECQ fit each unit's output *after* its activation, so pre-activation mean shifts they leave where ReLU6
    clips are harmless — and "correcting" them adds error: on MobileNetV2 W4A8 AdaRound + bias correction
    gave logit SQNR 2.3 dB (agreement 51 %) against 12.0 dB (75 %) without, while after RTN it lifts the same
    model 17 → 46 %. BN re-estimation (unfolded BN only) is opt-in: on mobilenet-mini it
    lifts W4A8 (89.5 → 91.2 %) but cuts W8A8's logit SQNR from 33.9 to 21.2 dB
    (benchmarks/results/ptq_toolbox.json). ViTs have no BN and no ReLU pairs: all off there."""
    import quant.bn as qbn
    has_bn = bool(qbn.batchnorms(fmodel))
    fold = has_bn if fold_bn is None else fold_bn
    return {"fold_bn": fold, "equalize": fold if equalize is None else equalize,
            "bias_correction": (has_bn and method == "rtn") if bias_correction is None else bias_correction,
            "bn_reestimate": bool(bn_reestimate)}


def prepare_graph(fmodel, opts: dict, calib: torch.Tensor | None = None):
    """(prepared float copy, graph description for the checkpoint, report) for the pre-quantisation fixes."""
    import quant.bn as qbn
    import quant.equalize as qeq
    if opts["equalize"] and not opts["fold_bn"] and qbn.batchnorms(fmodel):
        raise UsageError("--equalize needs --fold-bn on a model with BatchNorm (CLE scales the folded convs)")
    model = copy.deepcopy(fmodel).eval()
    report = {}
    if opts["fold_bn"]:
        r = qbn.fold_bn(model)
        report["fold_bn"] = {"folded": len(r["folded"]), "unfolded": r["unfolded"]}
    if opts["equalize"]:
        criterion = opts.get("equalize_criterion") or ("activation" if calib is not None else "weight")
        r = qeq.equalize(model, calib=calib, criterion=criterion, absorb=opts.get("absorb_high_bias", True),
                         streams=opts.get("equalize_streams", True))
        report["equalize"] = {"pairs": len(r["pairs"]), "criterion": r["criterion"], "sweeps": r["sweeps"],
                              "relu6_to_clamp": len(r["clamps"]),
                              "high_bias_absorbed": len(r["absorbed"]), "streams": len(r["streams"])}
    return model, qeq.describe_graph(model, bool(opts["fold_bn"])), report


def post_fixes(prepared, qmodel, calib: torch.Tensor, opts: dict, batch: int = 64) -> dict:
    """After rounding: empirical bias correction, BN re-estimation. The correction comes last on purpose:
    re-calibrating the activation ranges after it would move every grid and undo the rounding bias it
    measured (MobileNetV2 W8A8 logit SQNR 16.5 → 16.1 dB when re-calibrated)."""
    import quant.bn as qbn
    from quant.bias_correction import correct_bias
    report = {}
    if opts["bias_correction"]:
        report["bias_correction"] = correct_bias(prepared, qmodel, calib)
    if opts["bn_reestimate"]:
        report["bn_reestimate"] = qbn.reestimate_bn(qmodel, calib, batch)
    return report


# ------------------------------------------------------------------ automatic mixed precision
def auto_precision(prepared, spec, candidates, calib, eval_x, eval_y, budget: dict, mode: str, points: int,
                   out_dir: Path, seed: int) -> tuple[dict, dict]:
    """(recipe pinning each layer's format, report incl. the Pareto points) for one budget:
    {"size": bytes} | {"latency_ms": ms} | {"drop": points of top-1}."""
    import numpy as np

    import quant
    import quant.mixed_precision as mp
    from quant.sensitivity import logits
    names = [n for n, p in quant.plan_model(prepared, spec).items() if p.kind in ("linear", "conv")]
    mods = dict(prepared.named_modules())
    sizes = np.array([[mp.weight_bytes(mods[n], c) for c in candidates] for n in names])
    fixed = 4.0 * (sum(t.numel() for t in prepared.state_dict().values() if t.is_floating_point())
                   - sum(mods[n].weight.numel() for n in names))
    macs = mp.layer_macs(prepared, calib, names)
    io_elems = _io_elems(prepared, calib, names)
    cost_model = mp.CostModel()
    lat = np.array([[cost_model.latency_s(macs[n], sizes[i, j], io_elems[n], c) * 1e3
                     for j, c in enumerate(candidates)] for i, n in enumerate(names)])
    torch.manual_seed(seed)
    deltas = mp.sensitivity_matrix(prepared, candidates, calib, calib[:64] if len(calib) > 64 else calib, names,
                                   mode=mode, progress=lambda it: tqdm(list(it), desc="sensitivity", leave=False, disable=None))
    ref = logits(prepared, eval_x)
    target = eval_y if eval_y is not None else ref.argmax(-1)
    base = 100.0 * (ref.argmax(-1) == target).double().mean().item()

    def measure(picks) -> dict:
        recipe = mp.assignment_recipe(names, candidates, picks, spec.recipe)
        s = quant.parse_spec(spec.family, spec.bits, recipe, spec.keep_float)
        q = quant.quantize_model(prepared, s, calib.split(64))
        acc = 100.0 * (logits(q, eval_x).argmax(-1) == target).double().mean().item()
        return {"size_bytes": float(fixed + sizes[np.arange(len(names)), picks].sum()),
                "latency_ms": float(lat[np.arange(len(names)), picks].sum()),
                "predicted_noise": float(deltas[np.arange(len(names)), picks].sum()), "top1": acc, "drop": base - acc,
                "recipe": recipe}

    pareto = [measure(p) for p in tqdm(mp.frontier(sizes, deltas, points), desc="pareto", leave=False, disable=None)]
    uniform = {c.label: measure(np.full(len(names), j)) for j, c in enumerate(candidates)}
    if "size" in budget:
        picks = mp.choose(sizes, deltas, budget["size"] - fixed)
        what = f"--max-size {budget['size'] / 1e6:.3f} MB"
        floor = fixed + sizes.min(1).sum()
    elif "latency_ms" in budget:
        picks = mp.choose(lat, deltas, budget["latency_ms"])
        what, floor = f"--max-latency-ms {budget['latency_ms']}", lat.min(1).sum()
    else:
        ok = [p for p in pareto if p["drop"] <= budget["drop"]]
        if not ok:
            raise UsageError(f"no candidate assignment keeps the drop within {budget['drop']} points (the best loses "
                             f"{min(p['drop'] for p in pareto):.2f}); raise --max-drop or add wider candidates")
        chosen = min(ok, key=lambda p: p["size_bytes"])
        picks = None
    if picks is None and "drop" not in budget:
        raise UsageError(f"{what} is below the smallest possible model ({floor / 1e6:.3f} MB or ms with the cheapest "
                         "candidate everywhere); raise the budget or add smaller candidates")
    if picks is not None:
        chosen = measure(picks)
    plot_pareto(pareto, uniform, chosen, out_dir / "pareto.png", "top-1" if eval_y is not None else "agreement")
    report = {"candidates": [c.label for c in candidates], "budget": budget, "sensitivity_mode": mode,
              "layers": len(names), "fixed_bytes": fixed, "cost_model": vars(cost_model) if hasattr(cost_model, "__dict__")
              else {"mac_per_s": cost_model.mac_per_s, "bytes_per_s": cost_model.bytes_per_s},
              "chosen": {k: v for k, v in chosen.items() if k != "recipe"},
              "pareto": [{k: v for k, v in p.items() if k != "recipe"} for p in pareto],
              "uniform": {k: {kk: vv for kk, vv in v.items() if kk != "recipe"} for k, v in uniform.items()}}
    return chosen["recipe"], report


@torch.no_grad()
def _io_elems(model, x, names) -> dict:
    mods = dict(model.named_modules())
    out = {}
    hooks = [mods[n].register_forward_hook(lambda _m, i, y, n=n: out.__setitem__(n, i[0][:1].numel() + y[:1].numel()))
             for n in names]
    try:
        model.eval()(x[:1])
    finally:
        for h in hooks:
            h.remove()
    return out


def plot_pareto(pareto: list, uniform: dict, chosen: dict, path: Path, metric: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    pts = sorted(pareto, key=lambda p: p["size_bytes"])
    ax.plot([p["size_bytes"] / 1e6 for p in pts], [p["top1"] for p in pts], "o-", label="mixed precision (DP)")
    for label, p in uniform.items():
        ax.scatter(p["size_bytes"] / 1e6, p["top1"], marker="s")
        ax.annotate(label, (p["size_bytes"] / 1e6, p["top1"]), fontsize=7)
    ax.scatter(chosen["size_bytes"] / 1e6, chosen["top1"], marker="*", s=200, c="red", label="chosen", zorder=5)
    ax.set_xlabel("model size (MB)")
    ax.set_ylabel(f"{metric} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sensitivity(rows: list, path: Path, metric: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(max(6, 0.22 * len(rows)), 4))
    xs = range(len(rows))
    ax.bar(xs, [r["only_drop"] for r in rows], label=f"{metric} drop, only this layer quantised")
    if rows and "float_gain" in rows[0]:
        ax.bar(xs, [-r["float_gain"] for r in rows], alpha=0.6, label=f"−gain when only this layer is float")
    ax.set_xticks(list(xs), [r["layer"] for r in rows], rotation=90, fontsize=6)
    ax.set_ylabel("points")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------ the command
@click.command("analyze")
@model_options
@click.option("--fmt", "family", default="int", show_default=True,
              type=click.Choice(["int", "fp4", "fp6", "fp8", "mxfp4", "mxfp6", "mxfp8", "mxint8"]))
@click.option("--bits", default="w4a8", show_default=True, help="Precision every layer is tried at, e.g. w4a8.")
@click.option("--calib", default="auto:256", show_default=True,
              help="Calibration data; auto = the model's own (Fashion-MNIST, or the photos for ImageNet models).")
@click.option("--eval-data", default="auto", show_default=True,
              help="Evaluation data; auto = the model's own (Fashion-MNIST, or the photos for ImageNet models).")
@click.option("--eval-limit", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--fold-bn/--no-fold-bn", default=None, help="Fold BatchNorm first [default: on for models with BN].")
@click.option("--equalize/--no-equalize", default=None, help="Cross-layer equalisation first [default: with --fold-bn].")
@click.option("--leave-one-out/--no-leave-one-out", default=True, show_default=True,
              help="Also measure each layer left float while the rest is quantised (doubles the time).")
@click.option("--top", default=10, show_default=True, help="Rows in the table of layers that matter.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory for sensitivity.json + .png.")
@click.option("--seed", default=0, show_default=True)
@overwrite_option("force")
def analyze_cmd(model, weights, trust_checkpoint, family, bits, calib, eval_data, eval_limit, fold_bn, equalize,
                leave_one_out, top, out, seed, force):
    """Per-layer sensitivity of MODEL at one precision: output SQNR and top-1 drop with only that layer
    quantised, and the top-1 gain with only it left float; a bar plot and a table of the layers that matter.

    \b
    Examples:
      edgevit analyze mobilenet-mini --bits w4a8 --out out/sens-mini
      edgevit analyze mobilenetv2 --bits w8a8 --calib photos --eval-data photos --out out/sens-mnv2
    """
    import quant
    from quant.sensitivity import layer_sensitivity, ranked
    with _spec_errors():
        spec = quant.parse_spec(family, bits)
        quant.check_out_dir(out, force)
    fmodel, meta = load(model, weights, trust_checkpoint)
    calib_x, eval_x, eval_y, note = load_sets(calib, eval_data, eval_limit, meta, seed)
    opts = graph_defaults(fmodel, fold_bn, equalize, False, False)
    prepared, _, greport = prepare_graph(fmodel, opts, calib_x)
    with _spec_errors():
        qmodel = quant.quantize_model(prepared, spec, calib_x.split(64))
    result = layer_sensitivity(prepared, qmodel, eval_x, eval_y, leave_one_out=leave_one_out,
                               progress=lambda it: tqdm(list(it), desc="layers", leave=False, disable=None))
    result |= {"model": model, "fmt": family, "bits": bits, "graph": greport, "data": note}
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sensitivity.json").write_text(json.dumps(_finite(result), indent=2))
    plot_sensitivity(result["layers"], out_dir / "sensitivity.png", result["metric"])
    cols = ["layer", "kind", "params", "SQNR alone (dB)", f"drop alone", f"gain if float"]
    rows = [[r["layer"], r["kind"], r["params"], f"{r['only_sqnr_db']:.1f}", f"{r['only_drop']:.2f}",
             f"{r.get('float_gain', float('nan')):.2f}"] for r in ranked(result, top)]
    print_table(f"{meta.name} {family} {bits}: float {result['float_top1']:.2f}% → all quantised "
                f"{result['quant_top1']:.2f}% ({result['metric']})", cols, rows)
    console.print(f"wrote {out_dir / 'sensitivity.json'} and {out_dir / 'sensitivity.png'}")


def load_sets(calib: str, eval_data: str, eval_limit: int | None, meta, seed: int):
    """(calib, eval x, eval y or None, note). `photos[:N]` are the real photos: calibration on the even views,
    evaluation (agreement with FP32) on the disjoint odd views — same scenes, different crops and flips."""
    from edgevit.data import calibration_tensor, load_data, parse_data_spec, resolve_data_spec
    calib, eval_data = (resolve_data_spec(d, meta.preprocess) for d in (calib, eval_data))
    cal_x = calibration_tensor(parse_data_spec(calib), meta.preprocess, seed=seed)
    spec = parse_data_spec(eval_data)
    if eval_limit is not None:
        spec = type(spec)(spec.kind, spec.path, eval_limit)
    ev_x, ev_y = load_data(spec, meta.preprocess, split="test", seed=seed)
    labelled = spec.kind == "fashion-mnist" and len(meta.labels) == 10
    return (cal_x, ev_x, ev_y if labelled else None,
            f"calib {calib} ({len(cal_x)} images), eval {eval_data} ({len(ev_x)} images"
            f"{'' if labelled else ', top-1 agreement with FP32'})")


def _spec_errors():
    from edgevit.commands.quantize import spec_errors
    return spec_errors()


def _finite(o):
    from edgevit.commands.quantize import _finite as f
    return f(o)


COMMANDS = [analyze_cmd]


def validate_auto(bits: str, family: str, recipe: dict, fixes: dict):
    """(candidates or None, budget or None, family and bits of the base spec) — rejects a bad --bits auto
    setup before any work: exactly one budget, parseable candidates."""
    import quant.mixed_precision as mp
    budgets = {k: fixes.get(k) for k in ("max_size", "max_latency_ms", "max_drop") if fixes.get(k) is not None}
    if bits.strip().lower() != "auto":
        if budgets:
            raise UsageError(f"--{next(iter(budgets)).replace('_', '-')} needs --bits auto")
        return None, None, family, bits
    if len(budgets) != 1:
        raise UsageError("--bits auto needs exactly one budget: --max-size 1.2MB, --max-latency-ms 3 or --max-drop 1.0")
    cands = mp.parse_candidates(fixes.get("candidates") or DEFAULT_CANDIDATES, recipe)
    key, value = next(iter(budgets.items()))
    if key == "max_size":
        budget = {"size": parse_size(value)}
    elif value <= 0 and key == "max_latency_ms":
        raise UsageError("--max-latency-ms must be positive")
    else:
        budget = {"latency_ms": value} if key == "max_latency_ms" else {"drop": value}
    first = next((c for c in cands if c.config is not None), None)
    if first is None:
        raise UsageError("--candidates needs at least one quantised format besides float")
    return cands, budget, first.family, first.bits


def run_auto(prepared, spec, candidates, budget, calib_x, eval_x, eval_y, mode: str, seed: int):
    """`quantize --bits auto`: (spec with the chosen per-layer formats, its plan, report, extra files for --out:
    recipe.yaml that reproduces the run, pareto.png)."""
    import tempfile

    import yaml

    import quant
    with tempfile.TemporaryDirectory() as tmp:
        recipe, report = auto_precision(prepared, spec, candidates, calib_x, eval_x, eval_y, budget, mode, 6,
                                        Path(tmp), seed)
        png = (Path(tmp) / "pareto.png").read_bytes()
    spec = quant.parse_spec(recipe.get("fmt", spec.family), recipe.get("bits", spec.bits), recipe, spec.keep_float)
    header = ("# edgevit quantize --bits auto: chosen per-layer formats; rerun with --recipe this file "
              f"(budget {budget}, candidates {','.join(c.label for c in candidates)})\n")
    return spec, quant.plan_model(prepared, spec), report, {
        "recipe.yaml": header + yaml.safe_dump({"quantize": recipe}, sort_keys=False), "pareto.png": png}
