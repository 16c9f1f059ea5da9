"""`--bits auto`: automatic mixed precision under one budget (model size, latency on the NPU roofline cost
model, or top-1 drop) from per-(layer, candidate) sensitivity; the search itself is quant.mixed_precision."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from edgevit.errors import StageError, UsageError
from edgevit.ptq.plots import plot_pareto

DEFAULT_CANDIDATES = "int:w8a8,int:w6a8,int:w4a8,int:w3a8,int:w2a8"

_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3}


def parse_size(text: str) -> float:
    """`1.2MB`, `800kB`, `3MiB`, `123456` → bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmg]i?b|b)?\s*", text.lower())
    if not m:
        raise UsageError(f"bad size {text!r}; write e.g. 1.2MB, 800kB or 3MiB")
    return float(m.group(1)) * _UNITS[m.group(2) or "b"]


def validate_auto(bits: str, family: str, recipe: dict, fixes: dict):
    """(candidates or None, budget or None, family and bits of the base spec) — rejects a bad --bits auto
    setup before any work: exactly one budget, parseable candidates."""
    import quant.mixed_precision as mp
    budgets = {k: fixes.get(k) for k in ("max_size", "max_latency_ms", "max_drop") if fixes.get(k) is not None}
    if bits.strip().lower() != "auto":
        if budgets:
            raise UsageError(f"--{next(iter(budgets)).replace('_', '-')} needs --bits auto")
        if fixes.get("workers") or fixes.get("address"):
            raise UsageError("--workers/--address fan out --bits auto's sensitivity measurements; "
                             "use them with --bits auto (or with `edgevit analyze`)")
        return None, None, family, bits
    if fixes.get("address") and not fixes.get("workers"):
        raise UsageError("--address needs --workers N (the Ray tasks to run there)")
    if fixes.get("workers") and fixes.get("sensitivity") == "scaled":
        raise UsageError("--workers fans out --sensitivity full (one task per candidate); --sensitivity scaled "
                         "measures one candidate and has nothing to spread")
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


def auto_precision(prepared, spec, candidates, calib, eval_x, eval_y, budget: dict, mode: str, points: int,
                   out_dir: Path, seed: int, map_fn=None) -> tuple[dict, dict]:
    """(recipe pinning each layer's format, report incl. the Pareto points) for one budget:
    {"size": bytes} | {"latency_ms": ms} | {"drop": points of top-1}. `map_fn`: how the full sensitivity
    matrix's candidate columns are computed (None: serially; edgevit.ray_pool.ray_map: Ray workers)."""
    import numpy as np

    import quant
    import quant.mixed_precision as mp
    from quant.checkpoint import weights_file_bytes
    from quant.sensitivity import logits
    names = [n for n, p in quant.plan_model(prepared, spec).items() if p.kind in ("linear", "conv")]
    mods = dict(prepared.named_modules())

    def build(picks):
        recipe = mp.assignment_recipe(names, candidates, picks, spec.recipe)
        s = quant.parse_spec(spec.family, spec.bits, recipe, spec.keep_float)
        return recipe, quant.quantize_model(prepared, s, calib.split(64))

    uniform_built = [build(np.full(len(names), j)) for j in range(len(candidates))]
    sizes, fixed = file_costs(names, [q for _, q in uniform_built])
    macs = mp.layer_macs(prepared, calib, names)
    io_elems = _io_elems(prepared, calib, names)
    cost_model = mp.CostModel()
    wbytes = np.array([[mp.weight_bytes(mods[n], c) for c in candidates] for n in names])   # what a kernel reads
    lat = np.array([[cost_model.latency_s(macs[n], wbytes[i, j], io_elems[n], c) * 1e3
                     for j, c in enumerate(candidates)] for i, n in enumerate(names)])
    torch.manual_seed(seed)
    deltas = mp.sensitivity_matrix(prepared, candidates, calib, calib[:64] if len(calib) > 64 else calib, names,
                                   mode=mode, progress=lambda it: tqdm(list(it), desc="sensitivity", leave=False, disable=None),
                                   map_fn=map_fn)
    ref = logits(prepared, eval_x)
    target = eval_y if eval_y is not None else ref.argmax(-1)
    base = 100.0 * (ref.argmax(-1) == target).double().mean().item()

    def measure(picks, built=None) -> dict:
        recipe, q = built or build(picks)
        acc = 100.0 * (logits(q, eval_x).argmax(-1) == target).double().mean().item()
        return {"size_bytes": float(weights_file_bytes(q)),
                "modelled_bytes": float(fixed + sizes[np.arange(len(names)), picks].sum()),
                "latency_ms": float(lat[np.arange(len(names)), picks].sum()),
                "predicted_noise": float(deltas[np.arange(len(names)), picks].sum()), "top1": acc, "drop": base - acc,
                "recipe": recipe}

    pareto = [measure(p) for p in tqdm(mp.frontier(sizes, deltas, points), desc="pareto", leave=False, disable=None)]
    uniform = {c.label: measure(np.full(len(names), j), uniform_built[j]) for j, c in enumerate(candidates)}
    onnx_bytes = built = None
    if "size" in budget:
        picks, built, onnx_bytes = _fit_size(build, sizes, deltas, fixed, budget["size"], tuple(calib.shape[1:]))
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
        chosen = measure(picks, built)
        if onnx_bytes is not None:
            chosen["onnx_model_bytes"] = onnx_bytes
    if "size" in budget and chosen["size_bytes"] > budget["size"]:   # cannot happen while file_costs bounds hold
        raise StageError(f"the chosen assignment's weights file is {chosen['size_bytes']:.0f} B, over {what}")
    plot_pareto(pareto, uniform, chosen, out_dir / "pareto.png", "top-1" if eval_y is not None else "agreement")
    report = {"candidates": [c.label for c in candidates], "budget": budget, "sensitivity_mode": mode,
              "layers": len(names), "fixed_bytes": fixed, "cost_model": vars(cost_model) if hasattr(cost_model, "__dict__")
              else {"mac_per_s": cost_model.mac_per_s, "bytes_per_s": cost_model.bytes_per_s},
              "chosen": {k: v for k, v in chosen.items() if k != "recipe"},
              "pareto": [{k: v for k, v in p.items() if k != "recipe"} for p in pareto],
              "uniform": {k: {kk: vv for kk, vv in v.items() if kk != "recipe"} for k, v in uniform.items()}}
    return chosen["recipe"], report


def _fit_size(build, sizes, deltas, fixed: float, size: float, item_shape: tuple[int, ...], tries: int = 8):
    """(picks, their built (recipe, model), bytes of its ONNX model file) whose weights.safetensors (costed exactly
    by `file_costs`) and ONNX artifact (graph and function bodies on top of the codes, measured by exporting the
    pick) both fit `size`; the caller measures the same build instead of quantising the pick again.
    An ONNX file over the budget lowers the search's budget by its overshoot (doubling on each retry) and searches
    again. A model the ONNX exporter cannot write is bounded by its checkpoint alone (bytes None)."""
    import quant.mixed_precision as mp
    from runtimes.errors import ExportError, ExportFailure
    from runtimes.onnx.artifact import model_file_bytes
    from runtimes.onnx.quantspec import spec_from_model
    limit, onnx_bytes, step = size, None, 1.0
    for _ in range(tries):
        picks = mp.choose(sizes, deltas, limit - fixed)   # costs are upper bounds of the checkpoint's bytes
        if picks is None:
            if onnx_bytes is None:
                return None, None, None   # not even the checkpoint fits: the caller names the smallest possible model
            break
        built = build(picks)
        try:
            onnx_bytes = model_file_bytes(built[1], spec_from_model(built[1]), (1, *item_shape))
        except (ExportError, ExportFailure):
            return picks, built, None
        if onnx_bytes <= size:
            return picks, built, onnx_bytes
        limit -= (onnx_bytes - size) * step
        step *= 2
    raise StageError(f"--max-size {size:.0f} B: the smallest ONNX model file found for it is {onnx_bytes} B (the "
                     f"graph adds {onnx_bytes - size:.0f} B over the weights); raise the budget by that much")


def file_costs(names: list[str], uniform: list) -> tuple[np.ndarray, float]:
    """(bytes[layer, candidate], fixed bytes): what each layer adds to weights.safetensors under each candidate
    (its packed codes, scales, bias and activation scales, each with its header entry) and what every file has
    (the other tensors, the header's frame and padding), from the checkpoints the uniform assignments write.

    Upper bounds, so a budget met by their sum is met by the file: each entry is costed with offsets as long as
    any file's can be, the 8-byte header padding in full. A layer's tensors are the ones named under it; the
    others (norms, embeddings, attention quantisers) depend on no layer's choice.
    """
    import numpy as np

    from quant import safetensors_io
    from quant.checkpoint import WEIGHTS_METADATA, checkpoint_tensors
    tensors = [checkpoint_tensors(q) for q in uniform]
    digits = len(str(sum(a.nbytes for t in tensors for a in t.values())))   # ≥ any mix's largest offset
    index = {n: i for i, n in enumerate(names)}

    def owner(key: str) -> int | None:
        parts = key.split(".")
        return next((index[p] for p in (".".join(parts[:k]) for k in range(len(parts) - 1, 0, -1)) if p in index), None)

    sizes = np.zeros((len(names), len(uniform)))
    other = np.zeros(len(uniform))
    for j, t in enumerate(tensors):
        for key, arr in t.items():
            i, cost = owner(key), safetensors_io.entry_bytes(key, arr, digits)
            if i is None:
                other[j] += cost
            else:
                sizes[i, j] += cost
    frame = 8 + 2 + len(json.dumps({"__metadata__": WEIGHTS_METADATA}, separators=(",", ":"))) - 2 + 7
    return sizes, float(other.max() + frame)


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


def run_auto(prepared, spec, candidates, budget, calib_x, eval_x, eval_y, mode: str, seed: int,
             workers: int | None = None, address: str | None = None):
    """`quantize --bits auto`: (spec with the chosen per-layer formats, its plan, report, extra files for --out:
    recipe.yaml that reproduces the run, pareto.png). `workers`/`address`: measure the full sensitivity
    matrix's candidates as Ray tasks (`--workers N [--address]`), one torch thread each."""
    import tempfile

    import yaml

    import quant
    with tempfile.TemporaryDirectory() as tmp:
        map_fn = None
        if workers:
            from edgevit.ray_pool import ray_map
            map_fn = ray_map(workers, address, lambda total: tqdm(total=total, desc="sensitivity (Ray)", leave=False,
                                                                  disable=None))
        recipe, report = auto_precision(prepared, spec, candidates, calib_x, eval_x, eval_y, budget, mode, 6,
                                        Path(tmp), seed, map_fn)
        png = (Path(tmp) / "pareto.png").read_bytes()
    spec = quant.parse_spec(recipe.get("fmt", spec.family), recipe.get("bits", spec.bits), recipe, spec.keep_float)
    header = ("# edgevit quantize --bits auto: chosen per-layer formats; rerun with --recipe this file "
              f"(budget {budget}, candidates {','.join(c.label for c in candidates)})\n")
    return spec, quant.plan_model(prepared, spec), report, {
        "recipe.yaml": header + yaml.safe_dump({"quantize": recipe}, sort_keys=False), "pareto.png": png}

