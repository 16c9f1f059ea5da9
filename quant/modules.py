"""Quantised modules, made by swapping the class of a float module (on a copy) in place.

Each keeps its float parameters and state-dict keys and gains descriptors exporters read:
- QuantLinear / QuantConv2d: `weight_quant` (WeightQuantizer or None), `input_quant` (ActQuantizer or None).
- quantised attention (any module with `attend(q, k)` and `aggregate(attn, v)`, e.g. the bundled
  ViT's): `q_quant`, `k_quant`, `v_quant` (inputs of q·kᵀ and attn·v) and `softmax_quant`
  (the softmax output, None = kept float).
- LayerNorm / GELU with quantised inputs: `input_quant`.
`quant_kind` names the kind ("linear", "conv", "attention", "norm", "gelu").
"""
from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from quant.quantizers import ActQuantizer, WeightQuantizer
from quant.spec import LayerConfig


class _CachedWeight:
    """Fake-quantised weight cached in eval mode, recomputed when weight or scale change in place."""

    weight_quant: WeightQuantizer | None

    def qweight(self) -> torch.Tensor:
        wq = self.weight_quant
        if wq is None:
            return self.weight
        if self.training or wq.rounding is not None or (torch.is_grad_enabled() and self.weight.requires_grad):
            return wq.quantize(self.weight)
        # keyed on the tensors themselves (weak references: a data_ptr alone can be reused by a new tensor once
        # the old one is freed, and a deepcopy carries the old key along), their storage (`.data = ...`) and
        # their in-place versions
        state = (self.weight._version, self.weight.data_ptr(), wq.scale._version, wq.scale.data_ptr())
        key = getattr(self, "_wq_key", None)
        if key is None or key[0]() is not self.weight or key[1]() is not wq.scale or key[2] != state:
            with torch.no_grad():
                self._wq_cache = wq.quantize(self.weight)
            self._wq_key = (weakref.ref(self.weight), weakref.ref(wq.scale), state)
        return self._wq_cache

    def __getstate__(self):
        """Pickling (torch.save of a whole model) drops the cache: weak references cannot be pickled."""
        state = dict(super().__getstate__())
        state.pop("_wq_key", None)
        state.pop("_wq_cache", None)
        return state

    def _init_quant(self, cfg: LayerConfig, act_axis: int) -> None:
        self.weight_quant = WeightQuantizer(cfg.weight, tuple(self.weight.shape)).fit(self.weight) if cfg.weight else None
        self.input_quant = ActQuantizer(cfg.act, axis=act_axis) if cfg.act else None
        self._wq_key = None

    def _q_in(self, x: torch.Tensor) -> torch.Tensor:
        return self.input_quant(x) if self.input_quant is not None else x

    @torch.no_grad()
    def export_descriptor(self) -> dict:
        """For runtimes/: W = q · scale with q the unscaled grid values (weight shape) and scale
        (rows, groups); MX weights appear as their element format with power-of-two group scales.
        `act` describes the input quantiser (zero_point only for unsigned INT formats)."""
        wq, aq = self.weight_quant, self.input_quant
        d = {"fmt": wq.grid_fmt.name if wq else None, "q": wq.from_groups(wq.grid_values(self.weight)) if wq else None,
             "scale": wq.scale.clone() if wq else None, "zero_point": None, "act": None}
        if aq is not None:
            gran = {"tensor": "per-tensor", "token": "per-token"}.get(aq.config.granularity, aq.config.granularity)
            act = {"fmt": aq.fmt.name, "granularity": gran, "dynamic": aq.config.dynamic}
            if aq.config.granularity == "tensor":
                act["scale"] = float(aq.scale)
                if aq.zero_point is not None:
                    act["zero_point"] = int(aq.zero_point)
            d["act"] = act
        return d


class QuantLinear(_CachedWeight, nn.Linear):
    quant_kind = "linear"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._q_in(x), self.qweight(), self.bias)


class QuantConv2d(_CachedWeight, nn.Conv2d):
    """Conv2d incl. depthwise (groups = channels): rows of the weight view are output channels."""
    quant_kind = "conv"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self._q_in(x), self.qweight(), self.bias)


class QuantAttentionMixin:
    """Quantises both inputs of q·kᵀ and of attn·v, and optionally the softmax output."""
    quant_kind = "attention"

    def attend(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        attn = super().attend(self.q_quant(q), self.k_quant(k))
        return self.softmax_quant(attn) if self.softmax_quant is not None else attn

    def aggregate(self, attn: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return super().aggregate(attn, self.v_quant(v))


class QuantInputMixin:
    """Quantises the input of a float op (LayerNorm, GELU) and runs the op in float."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.input_quant(x))


_DYNAMIC: dict[tuple[type, type], type] = {}


def _subclass(mixin: type, base: type, kind: str) -> type:
    key = (mixin, base)
    if key not in _DYNAMIC:
        _DYNAMIC[key] = type(f"Quant{base.__name__}", (mixin, base), {"quant_kind": kind})
    return _DYNAMIC[key]


def layer_kind(module: nn.Module) -> str | None:
    """Which quantised kind a float module can become (None: not quantisable)."""
    if getattr(module, "quant_kind", None):
        return None
    if type(module) is nn.Linear:
        return "linear"
    if type(module) is nn.Conv2d:
        return "conv"
    if callable(getattr(module, "attend", None)) and callable(getattr(module, "aggregate", None)):
        return "attention"
    if isinstance(module, nn.LayerNorm):
        return "norm"
    if isinstance(module, nn.GELU):
        return "gelu"
    return None


def swap(module: nn.Module, kind: str, cfg: LayerConfig) -> nn.Module:
    """Turn `module` into its quantised kind in place (class swap) and attach its quantisers."""
    if kind == "linear":
        module.__class__ = QuantLinear
        module._init_quant(cfg, act_axis=-1)
    elif kind == "conv":
        module.__class__ = QuantConv2d
        module._init_quant(cfg, act_axis=1)
    elif kind == "attention":
        module.__class__ = _subclass(QuantAttentionMixin, type(module), kind)
        module.q_quant = ActQuantizer(cfg.act, -1)
        module.k_quant = ActQuantizer(cfg.act, -1)
        module.v_quant = ActQuantizer(cfg.act, -1)
        module.softmax_quant = ActQuantizer(cfg.softmax, -1) if cfg.softmax else None
    elif kind in ("norm", "gelu"):
        module.__class__ = _subclass(QuantInputMixin, type(module), kind)
        module.input_quant = ActQuantizer(cfg.act, -1)
    else:
        raise ValueError(f"unknown layer kind {kind}")
    return module


def act_quantizers(model: nn.Module):
    """Every ActQuantizer in the model, with its qualified name."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ActQuantizer)]


def quantized_layers(model: nn.Module):
    """(name, module) for every swapped module, in model order."""
    return [(n, m) for n, m in model.named_modules() if getattr(m, "quant_kind", None)]
