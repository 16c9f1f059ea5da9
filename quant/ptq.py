"""Round-to-nearest PTQ: plan which layers get which config, swap them on a copy, calibrate.

`plan_model` validates everything (patterns that match nothing, shapes) before any work, so a
CLI can call it first; `quantize_model` is the one-call driver. Adaptive rounding methods start
from its result: weights hold `weight_quant.scale`, they set `weight_quant.rounding`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from quant.errors import SpecError
from quant.modules import act_quantizers, layer_kind, swap
from quant.spec import LayerConfig, QConfig, QuantSpec, matches


@dataclass(frozen=True)
class LayerPlan:
    kind: str                 # linear | conv | attention | norm | gelu
    config: LayerConfig

    def to_dict(self) -> dict:
        c = self.config
        return {"kind": self.kind, "weight": c.weight and c.weight.to_dict(), "act": c.act and c.act.to_dict(),
                "softmax": c.softmax and c.softmax.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "LayerPlan":
        return cls(d["kind"], LayerConfig(QConfig.from_dict(d["weight"]), QConfig.from_dict(d["act"]),
                                          QConfig.from_dict(d.get("softmax"))))


def plan_model(model: nn.Module, spec: QuantSpec) -> dict[str, LayerPlan]:
    """name → LayerPlan for every module the spec quantises; SpecError if a pattern matches no layer."""
    wanted = {"linear", "conv"} | ({"attention"} if spec.attention_matmuls else set()) \
        | ({"norm"} if spec.quantize_norm_inputs else set()) | ({"gelu"} if spec.quantize_gelu_inputs else set())
    candidates = [(n, k) for n, m in model.named_modules() if n and (k := layer_kind(m)) in wanted]
    if not candidates:
        raise SpecError("the model has no Linear, Conv2d or attention layers to quantise")
    for pattern in spec.patterns:
        if not any(matches(pattern, n) for n, _ in candidates):
            examples = ", ".join(n for n, _ in candidates[:3])
            raise SpecError(f"layer pattern {pattern!r} matches no quantisable layer (names look like {examples}, …)")
    plan = {}
    for name, kind in candidates:
        cfg = spec.layer_config(name)
        if cfg is None or (kind != "linear" and kind != "conv" and cfg.act is None):
            continue
        if kind in ("attention", "norm", "gelu"):
            cfg = LayerConfig(None, cfg.act, cfg.softmax if kind == "attention" else None)
        else:
            cfg = LayerConfig(cfg.weight, cfg.act, None)
        plan[name] = LayerPlan(kind, cfg)
    return plan


def apply_plan(model: nn.Module, plan: dict[str, LayerPlan]) -> nn.Module:
    """Swap the planned modules of `model` in place (weights are fitted from the current values)."""
    modules = dict(model.named_modules())
    missing = [n for n in plan if n not in modules]
    if missing:
        raise SpecError(f"the model has no layer {missing[0]!r}; was the checkpoint made for another architecture?")
    for name, p in plan.items():
        swap(modules[name], p.kind, p.config)
    return model


def _batches(calib) -> Iterable[torch.Tensor]:
    if isinstance(calib, torch.Tensor):
        return calib.split(64)
    return (b[0] if isinstance(b, (tuple, list)) else b for b in calib)


def observe(quantizers: list, run: Callable[[], int]) -> int:
    """Calibrate static activation quantisers: `run()` feeds the calibration data through the model (values
    pass through unquantised while observing) and returns how many images it fed. Min-max needs one pass;
    MSE/percentile observers get a second one that histograms every value over the range the first found."""
    for q in quantizers:
        q.observing = True
    try:
        n = run()
        if any([q.start_histogram() for q in quantizers]):
            run()
    finally:
        for q in quantizers:
            q.observing = False
    if quantizers and n == 0:
        raise SpecError("static activation quantisation needs calibration data, but the loader was empty")
    for q in quantizers:
        q.freeze()
    return n


@torch.no_grad()
def calibrate(qmodel: nn.Module, calib) -> int:
    """Run calibration batches with every static activation quantiser observing, then freeze them.
    Weights are already fake-quantised, activations pass through unquantised while observing."""
    quantizers = [q for _, q in act_quantizers(qmodel) if q.config.granularity == "tensor"]
    batches = list(_batches(calib)) if quantizers else []   # a one-shot loader must feed both passes

    def run() -> int:
        for x in batches:
            qmodel(x)
        return sum(len(x) for x in batches)
    return observe(quantizers, run)


def quantize_model(model: nn.Module, spec: QuantSpec, calib_loader=None, plan: dict | None = None) -> nn.Module:
    """A quantised copy of `model` (RTN weights, calibrated activations); `model` is not changed.

    calib_loader: a tensor of inputs, or an iterable of tensors / (x, y) pairs (wrap it in a
    progress bar if you like). The copy is in eval mode with requires_grad off.
    """
    plan = plan if plan is not None else plan_model(model, spec)
    qmodel = copy.deepcopy(model).eval()
    for p in qmodel.parameters():
        p.requires_grad_(False)
    apply_plan(qmodel, plan)
    qmodel.quant_plan = plan
    qmodel.quant_spec = spec
    calibrate(qmodel, calib_loader if calib_loader is not None else [])
    return qmodel
