"""PTQ toolbox numbers: graph fixes on mobilenet-mini (Fashion-MNIST top-1) and MobileNetV2 (ImageNet weights,
top-1 agreement with FP32 on the 21 held-out real-photo views, calibrated on the other 21), and mixed precision
at the size of uniform W4A8 on mobilenet-mini. One torch thread; writes benchmarks/results/ptq_toolbox.json.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ptq_toolbox.py
"""
import copy
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

import quant
import quant.mixed_precision as mp
from edgevit.commands.analyze import load_sets, post_fixes, prepare_graph
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


def fixes_table(name, calib, eval_data, limit, bits_list):
    fmodel, meta = load_model(name)
    cal, x, y, note = load_sets(calib, eval_data, limit, meta, 0)
    rows = {"data": note, "float_top1": score(fmodel, fmodel, x, y)["top1"]}
    variants = {"none": dict(fold_bn=False, equalize=False, bias_correction=False, bn_reestimate=False),
                "bn_reestimate": dict(fold_bn=False, equalize=False, bias_correction=False, bn_reestimate=True),
                "fold": dict(fold_bn=True, equalize=False, bias_correction=False, bn_reestimate=False),
                "fold+bc": dict(fold_bn=True, equalize=False, bias_correction=True, bn_reestimate=False),
                "fold+cle": dict(fold_bn=True, equalize=True, bias_correction=False, bn_reestimate=False),
                "fold+cle+bc": dict(fold_bn=True, equalize=True, bias_correction=True, bn_reestimate=False)}
    for bits in bits_list:
        spec = quant.parse_spec("int", bits)
        for v, opts in variants.items():
            prepared, _, grep = prepare_graph(fmodel, opts, cal)
            if v in ("fold", "fold+cle"):
                rows.setdefault("fp32_equivalence_rel_err", {})[v] = float(
                    ((logits(prepared, x) - logits(fmodel, x)).norm() / logits(fmodel, x).norm()))
            q = quant.quantize_model(prepared, spec, cal.split(64))
            post_fixes(prepared, q, cal, opts)
            rows[f"{bits} {v}"] = score(fmodel, q, x, y)
            print(name, bits, v, rows[f"{bits} {v}"], flush=True)
    return rows


def mixed_precision_mini():
    fmodel, meta = load_model("mobilenet-mini")
    cal, x, y, _ = load_sets("fashion-mnist:256", "fashion-mnist", 2000, meta, 0)
    opts = dict(fold_bn=True, equalize=True, bias_correction=True, bn_reestimate=False)
    prepared, _, _ = prepare_graph(fmodel, opts, cal)
    spec = quant.parse_spec("int", "w4a8")
    cands = mp.parse_candidates("int:w8a8,int:w6a8,int:w4a8,int:w3a8,int:w2a8")
    names = [n for n, p in quant.plan_model(prepared, spec).items() if p.kind in ("linear", "conv")]
    mods = dict(prepared.named_modules())
    sizes = np.array([[mp.weight_bytes(mods[n], c) for c in cands] for n in names])
    out = {}
    for mode in ("full", "scaled"):
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


if __name__ == "__main__":
    t0 = time.time()
    results = {"machine": "2 shared CPU cores, 1 torch thread; accuracy/size numbers are load-independent",
               "loadavg_start": os.getloadavg()}
    results["mobilenet-mini"] = fixes_table("mobilenet-mini", "fashion-mnist:256", "fashion-mnist", 2000, ["w8a8", "w4a8"])
    results["mixed_precision_mobilenet-mini"] = mixed_precision_mini()
    results["mobilenetv2"] = fixes_table("mobilenetv2", "photos", "photos", None, ["w8a8"])
    results["loadavg_end"] = os.getloadavg()
    results["wall_s"] = round(time.time() - t0, 1)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))
    print(f"wrote {OUT}")
