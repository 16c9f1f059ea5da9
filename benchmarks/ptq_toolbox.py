"""PTQ toolbox numbers: graph fixes on mobilenet-mini (Fashion-MNIST top-1) and MobileNetV2 (ImageNet weights,
top-1 agreement with FP32 on the 63 held-out real-photo views, calibrated on the other 63), and mixed precision
at the size of uniform W4A8 on mobilenet-mini and MobileNetV2. One torch thread; writes benchmarks/results/ptq_toolbox.json + .md.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ptq_toolbox.py [--sections mixed_precision_mobilenetv2 ...]
"""
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

import quant
import quant.mixed_precision as mp
from edgevit.ptq import load_sets, post_fixes, prepare_graph
from edgevit.models.registry import load_model
from quant.sensitivity import logits

torch.set_num_threads(1)
OUT = Path(__file__).parent / "results" / "ptq_toolbox.json"


def score(fmodel, q, x, y):
    ref = logits(fmodel, x)
    out = logits(q, x)
    target = y if y is not None else ref.argmax(-1)
    return {"top1": round(100 * (out.argmax(-1) == target).double().mean().item(), 2),
            "logit_sqnr_db": round(quant.sqnr_db(ref, out), 2)}


OFF = dict(fold_bn=False, equalize=False, bias_correction=False, bn_reestimate=False)
VARIANTS = {"none": OFF,
            "bn_reestimate": OFF | dict(bn_reestimate=True),
            "fold": OFF | dict(fold_bn=True),
            "fold+bc": OFF | dict(fold_bn=True, bias_correction=True),
            "fold+cle[w]": OFF | dict(fold_bn=True, equalize=True, equalize_criterion="weight"),
            "fold+cle[w]+bc": OFF | dict(fold_bn=True, equalize=True, equalize_criterion="weight", bias_correction=True),
            "fold+cle[act]": OFF | dict(fold_bn=True, equalize=True, equalize_criterion="activation"),
            "fold+cle[act]+bc": OFF | dict(fold_bn=True, equalize=True, equalize_criterion="activation",
                                           bias_correction=True),
            # CLE's pairs alone, without the residual streams (quant.streams): what the streams add
            "fold+cle[act,pairs]+bc": OFF | dict(fold_bn=True, equalize=True, equalize_criterion="activation",
                                                 equalize_streams=False, bias_correction=True)}


def fixes_table(name, calib, eval_data, limit, bits_list, observers=("minmax", "mse")):
    """One row per (bits, graph fixes, activation observer), the observer set explicitly (recipe act_observer);
    `mse` (the clipping search over a histogram of every value) is edgevit's default below 8 bits only."""
    fmodel, meta = load_model(name)
    cal, x, y, note = load_sets(calib, eval_data, limit, meta, 0)
    rows = {"data": note, "float_top1": score(fmodel, fmodel, x, y)["top1"]}
    for v, opts in VARIANTS.items():
        prepared, _, grep = prepare_graph(fmodel, opts, cal)
        if opts["fold_bn"]:
            rows.setdefault("fp32_equivalence_rel_err", {})[v.removesuffix("+bc")] = float(
                ((logits(prepared, x) - logits(fmodel, x)).norm() / logits(fmodel, x).norm()))
        for bits in bits_list:
            for obs in observers:
                spec = quant.parse_spec("int", bits, {"act_observer": obs})
                q = quant.quantize_model(prepared, spec, cal.split(64))
                post_fixes(prepared, q, cal, opts)
                key = f"{bits} {v}" + ("" if obs == "minmax" else f" act:{obs}")
                rows[key] = score(fmodel, q, x, y)
                print(name, key, rows[key], flush=True)
    return rows


def markdown(results) -> str:
    lines = [f"# PTQ toolbox ({results['machine']}; load average {results['loadavg_start'][0]:.1f} at start)", ""]
    for model in ("mobilenetv2", "mobilenet-mini"):
        r = results[model]
        metric = "top-1 agreement with FP32" if model == "mobilenetv2" else "top-1"
        lines += [f"## {model}: {r['data']}; float {r['float_top1']} %", "",
                  "Default of `edgevit quantize` (RTN): fold + CLE (activation criterion, pairs and residual streams) + "
                  "bias correction on models with BN, `minmax` activation observer at 8 bits; `cle[act,pairs]`: "
                  "without the residual streams.", "",
                  f"| precision | graph fixes | act observer | {metric} (%) | logit SQNR (dB) |", "|---|---|---|---|---|"]
        for k, v in r.items():
            if isinstance(v, dict) and "top1" in v:
                bits, rest = k.split(" ", 1)
                fixes, _, obs = rest.partition(" act:")
                lines.append(f"| {bits} | {fixes} | {obs or 'minmax'} | {v['top1']} | {v['logit_sqnr_db']} |")
        lines += ["", "FP32 equivalence of the prepared graph (relative logit error): "
                  + ", ".join(f"{k} {v:.1e}" for k, v in r["fp32_equivalence_rel_err"].items()), ""]
    for model, metric in (("mobilenet-mini", "Fashion-MNIST top-1"), ("mobilenetv2", "top-1 agreement with FP32")):
        if f"mixed_precision_{model}" not in results:
            continue
        lines += [f"## mixed precision at the weight bytes of uniform W4A8, {model} ({metric}, RTN)", "",
                  "`auto[full]`: sensitivity measured per layer and candidate; `auto[scaled]`: measured at one "
                  "candidate, scaled by each layer's local noise (cheaper).", "",
                  "| assignment | top-1 (%) | logit SQNR (dB) | weight bytes |", "|---|---|---|---|"]
        for k, v in results[f"mixed_precision_{model}"].items():
            lines.append(f"| {k} | {v['top1']} | {v['logit_sqnr_db']} | {v.get('weight_bytes', '')} |")
    return "\n".join(lines) + "\n"


def mixed_precision(name, calib, eval_data, limit, modes=("full", "scaled")):
    """`--bits auto` at the weight bytes of uniform W4A8 (candidates int w8/w6/w4/w3/w2, a8) vs uniform W4A8,
    both with the default graph fixes (fold + CLE + bias correction), and plain W4A8 RTN without them."""
    fmodel, meta = load_model(name)
    cal, x, y, _ = load_sets(calib, eval_data, limit, meta, 0)
    opts = dict(fold_bn=True, equalize=True, bias_correction=True, bn_reestimate=False)
    prepared, _, _ = prepare_graph(fmodel, opts, cal)
    spec = quant.parse_spec("int", "w4a8")
    cands = mp.parse_candidates("int:w8a8,int:w6a8,int:w4a8,int:w3a8,int:w2a8")
    names = [n for n, p in quant.plan_model(prepared, spec).items() if p.kind in ("linear", "conv")]
    mods = dict(prepared.named_modules())
    sizes = np.array([[mp.weight_bytes(mods[n], c) for c in cands] for n in names])
    out = {}
    for mode in modes:
        t0 = time.perf_counter()
        deltas = mp.sensitivity_matrix(prepared, cands, cal, cal[:64], names, mode=mode)
        picks = mp.choose(sizes, deltas, sizes[:, 2].sum())
        recipe = mp.assignment_recipe(names, cands, picks)
        s = quant.parse_spec(recipe["fmt"], recipe["bits"], recipe)
        for fix in (False, True):
            q = quant.quantize_model(prepared, s, cal.split(64))
            if fix:
                post_fixes(prepared, q, cal, opts)
            out[f"auto[{mode}]{' +bc' if fix else ''}"] = score(fmodel, q, x, y) | {
                "weight_bytes": float(sizes[np.arange(len(names)), picks].sum()),
                "search_s": round(time.perf_counter() - t0, 1)}
            print(mode, fix, out[f"auto[{mode}]{' +bc' if fix else ''}"], flush=True)
    for fix in (False, True):
        q = quant.quantize_model(prepared, spec, cal.split(64))
        if fix:
            post_fixes(prepared, q, cal, opts)
        out[f"uniform w4a8{' +bc' if fix else ''}"] = score(fmodel, q, x, y) | {"weight_bytes": float(sizes[:, 2].sum())}
    q = quant.quantize_model(fmodel, spec, cal.split(64))   # no graph fixes at all
    out["uniform w4a8 plain RTN"] = score(fmodel, q, x, y)
    return out


SECTIONS = {
    "mobilenet-mini": lambda: fixes_table("mobilenet-mini", "fashion-mnist:256", "fashion-mnist", 2000, ["w8a8", "w4a8"],
                                          observers=("minmax",)),
    "mixed_precision_mobilenet-mini": lambda: mixed_precision("mobilenet-mini", "fashion-mnist:256", "fashion-mnist", 2000),
    "mobilenetv2": lambda: fixes_table("mobilenetv2", "photos", "photos", None, ["w8a8"]),
    "mixed_precision_mobilenetv2": lambda: mixed_precision("mobilenetv2", "photos", "photos", None, modes=("scaled",)),
}

if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS),
                    help="rerun only these; the others are kept from the existing results file")
    args = ap.parse_args()
    t0 = time.time()
    results = json.loads(OUT.read_text()) if OUT.exists() and set(args.sections) != set(SECTIONS) else {}
    results |= {"machine": "2 shared CPU cores, 1 torch thread; accuracy/size numbers are load-independent",
                "loadavg_start": os.getloadavg()}
    for name in args.sections:
        results[name] = SECTIONS[name]()
    results["loadavg_end"] = os.getloadavg()
    results["wall_s"] = round(time.time() - t0, 1)
    results["sections_rerun"] = args.sections
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))
    OUT.with_suffix(".md").write_text(markdown(results))
    print(f"wrote {OUT} and {OUT.with_suffix('.md')}")
