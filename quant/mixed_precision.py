"""Automatic mixed precision: per-layer weight/activation formats under a size or latency budget.

1. Sensitivity per (layer, candidate) as the normalised logit noise ‖z_q − z‖²/‖z‖² with only that layer
   quantised. "full" measures every pair (one forward each); "scaled" measures one reference candidate per
   layer and scales it by the ratio of the layer's own output noise under each candidate (one layer op
   each, on cached float inputs) — small perturbations propagate linearly, so the logit noise of layer i
   is proportional to the noise injected at i.
2. Noise from different layers adds (independent errors; the same assumption as HAWQ / NNCF's HAWQ-based
   precision init), so the search is a multiple-choice knapsack: minimise Σ Δ_i(c_i) subject to
   Σ cost_i(c_i) ≤ budget. Solved exactly by dynamic programming over the budget cut into bins, with every
   cost rounded *up* to a bin, so the returned assignment never exceeds the budget. Greedy (best Δ per
   byte first) is not optimal for a knapsack; the DP is and costs O(layers × candidates × bins).
3. Costs: size = packed codes + scales (`weight_bytes`, what a kernel reads); `edgevit quantize --bits auto
   --max-size` costs the file instead — every tensor a layer adds to weights.safetensors with its header
   entry, as upper bounds (edgevit.ptq.auto.file_costs) — so the budget bounds the file the user gets;
   latency = a per-layer roofline (`CostModel`): max(MACs / MAC rate for the precision, bytes moved / bandwidth).
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from quant.errors import SpecError
from quant.modules import layer_kind, quantized_layers, swap
from quant.ptq import observe, quantize_model
from quant.quantizers import WeightQuantizer
from quant.sensitivity import logits, only
from quant.spec import FAMILIES, LayerConfig, parse_spec

_SCALE_BYTES = {"float16": 2, "float32": 4, "e8m0": 1}


@dataclass(frozen=True)
class Candidate:
    """One per-layer choice: `family:wNaM` (e.g. int:w4a8, fp8:w8a8) or `float` (left unquantised)."""
    label: str
    family: str | None
    bits: str | None
    config: LayerConfig | None

    @property
    def recipe_entry(self):
        return "float" if self.config is None else {"fmt": self.family, "bits": self.bits}


def parse_candidates(text: str | Iterable[str], recipe: dict | None = None) -> list[Candidate]:
    """`int:w8a8,int:w4a8,fp8:w8a8,float` → candidates (recipe options such as granularity apply to all)."""
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if len(items) < 2:
        raise SpecError("mixed precision needs at least two candidates, e.g. int:w8a8,int:w4a8")
    opts = {k: v for k, v in (recipe or {}).items() if k not in ("layers", "keep_float", "fmt", "bits")}
    out = []
    for item in items:
        if item.lower() == "float":
            out.append(Candidate("float", None, None, None))
            continue
        family, sep, bits = item.lower().partition(":")
        if not sep or family not in FAMILIES:
            raise SpecError(f"bad candidate {item!r}; write FAMILY:wNaM with FAMILY one of {', '.join(FAMILIES)}, "
                            "e.g. int:w4a8, or float")
        out.append(Candidate(f"{family}:{bits}", family, bits, parse_spec(family, bits, opts).default))
    if len({c.label for c in out}) != len(out):
        raise SpecError(f"candidate list {','.join(items)} repeats an entry")
    return out


def weighted_layers(model: nn.Module, names: Iterable[str] | None = None) -> list[tuple[str, nn.Module]]:
    """The float Linear/Conv2d layers mixed precision chooses for (optionally restricted to `names`)."""
    keep = None if names is None else set(names)
    return [(n, m) for n, m in model.named_modules() if layer_kind(m) in ("linear", "conv")
            and (keep is None or n in keep)]


def weight_bytes(m: nn.Module, cand: Candidate) -> float:
    """Stored bytes of the layer's weight under `cand`: packed codes + scales (float: 4 bytes/param)."""
    if cand.config is None:
        return 4.0 * m.weight.numel()
    wq = WeightQuantizer(cand.config.weight, tuple(m.weight.shape))
    scale = "e8m0" if wq.config.granularity == "block" else "float16"
    return m.weight.numel() * wq.fmt.code_bits / 8 + wq.scale.numel() * _SCALE_BYTES[scale]


@torch.no_grad()
def layer_macs(model: nn.Module, example: torch.Tensor, names: list[str]) -> dict[str, int]:
    """MACs of each named Linear/Conv2d for one input (batch 1)."""
    mods = dict(model.named_modules())
    macs: dict[str, int] = {}

    def hook(m, _i, y, name):
        fan_in = m.in_features if isinstance(m, nn.Linear) else (m.in_channels // m.groups) * m.weight[0, 0].numel()
        macs[name] = macs.get(name, 0) + y.numel() * fan_in

    hooks = [mods[n].register_forward_hook(lambda m, i, y, n=n: hook(m, i, y, n)) for n in names]
    try:
        model.eval()(example[:1])
    finally:
        for h in hooks:
            h.remove()
    return macs


@dataclass(frozen=True)
class CostModel:
    """Roofline latency of one layer on an edge NPU: max(compute, memory) per layer, summed.

    mac_per_s: INT8×INT8 MAC rate (default 4 TMAC/s ≈ 8 TOPS, a mid-range phone NPU); operands wider than
    8 bits run at half (one side 16-bit) or a quarter (both) of it, float layers run as FP16×FP16.
    bytes_per_s: DRAM bandwidth (default 20 GB/s, LPDDR4X-class). Weights are read once, the input and
    output activations once each, at the layer's activation width (8 bits for the output)."""
    mac_per_s: float = 4e12
    bytes_per_s: float = 20e9

    def latency_s(self, macs: int, weight_bytes: float, act_elems: int, cand: Candidate) -> float:
        wb = 16 if cand.config is None else cand.config.weight.bits
        ab = 16 if cand.config is None or cand.config.act is None else cand.config.act.bits
        wide = (wb > 8) + (ab > 8)
        compute = macs / (self.mac_per_s / (2 ** wide))
        wbytes = weight_bytes / 2 if cand.config is None else weight_bytes   # float weights ship as FP16
        memory = (wbytes + act_elems * (ab / 8 + 1)) / self.bytes_per_s
        return max(compute, memory)


@torch.no_grad()
def _layer_io(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    mods = dict(model.named_modules())
    io = {}
    hooks = [mods[n].register_forward_hook(lambda _m, i, y, n=n: io.__setitem__(n, (i[0].detach(), y.detach())))
             for n in names]
    try:
        model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return io


@torch.no_grad()
def _local_noise(m: nn.Module, inp: torch.Tensor, out: torch.Tensor, cand: Candidate) -> float:
    """‖layer_q(x) − layer(x)‖² / ‖layer(x)‖² for this one layer under `cand` (activations calibrated on x)."""
    if cand.config is None:
        return 0.0
    q = swap(copy.deepcopy(m), layer_kind(m), cand.config)
    if q.input_quant is not None and q.input_quant.config.granularity == "tensor":
        observe([q.input_quant], lambda: q(inp).shape[0])
    err = (q(inp) - out).double().pow(2).sum()
    return float(err / out.double().pow(2).sum().clamp(min=1e-30))


@torch.no_grad()
def candidate_deltas(cand: Candidate, model: nn.Module, calib: torch.Tensor, x: torch.Tensor, names: list[str],
                     ref: torch.Tensor) -> np.ndarray:
    """Δ[:, cand]: the normalised logit noise of `model` with only names[i] quantised as `cand`, for every i.
    A module-level function of plain arguments, so a parallel `map` can ship it to other processes."""
    spec = parse_spec(cand.family, cand.bits)
    spec = type(spec)(spec.family, spec.bits, cand.config)   # the candidate's exact config everywhere
    qmodel = quantize_model(model, spec, calib.split(64))
    power = ref.double().pow(2).sum()
    col = np.zeros(len(names))
    for i, name in enumerate(names):
        with only(qmodel, [name]):
            out = logits(qmodel, x)
        col[i] = float((out.double() - ref.double()).pow(2).sum() / power)
    return col


def sensitivity_matrix(model: nn.Module, candidates: list[Candidate], calib: torch.Tensor, x: torch.Tensor,
                       names: list[str], mode: str = "scaled", reference: int | None = None,
                       progress: Callable[[Iterable], Iterable] = iter, map_fn: Callable | None = None) -> np.ndarray:
    """Δ[i, c]: normalised logit noise with only layer names[i] quantised as candidates[c] (float: 0).

    `map_fn(fn, items)`: how the candidates' columns of the full mode are computed — the builtin `map`
    (default, with `progress`) or a parallel one (edgevit.ray_pool.ray_map); each column is independent and
    deterministic, so the matrix is the same either way at the same thread count."""
    ref = logits(model, x)
    deltas = np.zeros((len(names), len(candidates)))
    column = functools.partial(candidate_deltas, model=model, calib=calib, x=x, names=names, ref=ref)

    def measure(cidx: int, todo: list[int]) -> None:
        deltas[todo, cidx] = column(candidates[cidx])[todo]

    quantised = [c for c, cand in enumerate(candidates) if cand.config is not None]
    if mode == "full":
        cols = (map_fn or (lambda fn, items: map(fn, progress(items))))(column, [candidates[c] for c in quantised])
        for c, col in zip(quantised, cols):
            deltas[:, c] = col
        return deltas
    if mode != "scaled":
        raise SpecError(f"unknown sensitivity mode {mode!r}; use full or scaled")
    if reference is None:   # the median-width quantised candidate: linear regime, yet informative
        order = sorted(quantised, key=lambda c: candidates[c].config.weight.bits)
        reference = order[len(order) // 2]
    measure(reference, list(range(len(names))))
    io = _layer_io(model, names, calib[:32])
    mods = dict(model.named_modules())
    for i in progress(range(len(names))):
        inp, out = io[names[i]]
        local = [_local_noise(mods[names[i]], inp, out, candidates[c]) if c in quantised else 0.0
                 for c in range(len(candidates))]
        base = local[reference]
        for c in quantised:
            if c != reference:
                deltas[i, c] = deltas[i, reference] * local[c] / base if base > 0 else local[c]
    return deltas


def choose(costs: np.ndarray, deltas: np.ndarray, budget: float, bins: int = 4096) -> np.ndarray | None:
    """Exact multiple-choice knapsack: per-layer candidate indices minimising Σ deltas with Σ costs ≤ budget,
    or None if even the cheapest assignment is over. Costs are discretised to budget/bins: rounded to the
    nearest bin first (exact for commensurate costs), and rounded up if that answer overshoots the budget."""
    costs, deltas = np.asarray(costs, float), np.asarray(deltas, float)
    if costs.min(1).sum() > budget * (1 + 1e-12):
        return None
    for rounding in (np.round, np.ceil):
        picks = _knapsack(np.maximum(rounding(costs / (budget / bins) - 1e-9), 0).astype(np.int64), deltas, bins)
        if picks is not None and costs[np.arange(len(costs)), picks].sum() <= budget * (1 + 1e-12):
            return picks
    return None


def _knapsack(w: np.ndarray, deltas: np.ndarray, bins: int) -> np.ndarray | None:
    best = np.zeros(bins + 1)   # best[b]: least noise of the layers so far within b bins
    picks = np.zeros((len(w), bins + 1), dtype=np.int16)
    idx = np.arange(bins + 1)
    for i in range(len(w)):
        cand = np.full((w.shape[1], bins + 1), np.inf)
        for c in range(w.shape[1]):
            ok = idx >= w[i, c]
            cand[c, ok] = best[idx[ok] - w[i, c]] + deltas[i, c]
        picks[i] = cand.argmin(0)
        best = cand.min(0)
    if not np.isfinite(best[bins]):
        return None
    out, b = np.zeros(len(w), dtype=np.int64), bins
    for i in range(len(w) - 1, -1, -1):
        out[i] = picks[i, b]
        b -= w[i, out[i]]
    return out


def frontier(costs: np.ndarray, deltas: np.ndarray, points: int = 8) -> list[np.ndarray]:
    """Optimal assignments for `points` budgets from the cheapest to the most expensive total cost."""
    lo, hi = costs.min(1).sum(), costs.max(1).sum()
    seen, out = set(), []
    for budget in np.linspace(lo * 1.0001, hi, points):
        a = choose(costs, deltas, budget)
        if a is not None and tuple(a) not in seen:
            seen.add(tuple(a))
            out.append(a)
    return out


def assignment_recipe(names: list[str], candidates: list[Candidate], picks, base: dict | None = None) -> dict:
    """A quantize recipe whose `layers` pin each chosen layer's format (quant.spec's per-layer override format);
    the most common choice becomes the default."""
    counts: dict[int, int] = {}
    for p in picks:
        counts[int(p)] = counts.get(int(p), 0) + 1
    quantised = [c for c in counts if candidates[c].config is not None]
    default = max(quantised, key=lambda c: counts[c]) if quantised else None
    recipe = {k: v for k, v in (base or {}).items() if k not in ("layers", "fmt", "bits")}
    if default is not None:
        recipe |= {"fmt": candidates[default].family, "bits": candidates[default].bits}
    recipe["layers"] = {n: candidates[int(p)].recipe_entry for n, p in zip(names, picks) if int(p) != default}
    return recipe


def quantised_weight_names(qmodel: nn.Module) -> list[str]:
    return [n for n, m in quantized_layers(qmodel) if getattr(m, "weight_quant", None) is not None]
