"""brevitas as a PTQ backend: the same precision spec through brevitas' quantisers and algorithms.

`quantize(model, spec, calib, method)` maps every planned layer of the spec to brevitas quantisers
(INT per-channel weights with absmax or MSE scales, OCP FP ExMy per-channel weights, MX weights;
static per-tensor INT/FP activations; q/k/v inputs of the attention matmuls through QuantIdentity),
then runs brevitas' PTQ: `calibration_mode` for activation ranges, `gptq_mode` for method `gptq`,
and `bias_correction_mode`. The result comes back as an edgevit quantised model: weights, scales and
biases from brevitas (a bias brevitas adds to a bias-free conv is folded into the BatchNorm that
follows it), static activation ranges re-calibrated by edgevit on the same images — so checkpoints,
reports and exporters work unchanged. `export_qcdq` writes brevitas' own QCDQ ONNX.

What brevitas' core quantisers cannot express is refused up front with the recipe change that
fixes it (per-token dynamic activations, FP weights in groups): brevitas' learned rounding and
per-token quantisers live in `brevitas_examples`, not in its library API.
"""
from __future__ import annotations

import copy
import time

import torch
from torch import nn

from edgevit.errors import UsageError

INSTALL_HINT = "pip install edgevit[brevitas]"
METHODS = {"rtn": "calibration + bias correction", "gptq": "calibration + GPTQ + bias correction"}


class Unsupported(UsageError):
    """A spec brevitas' core quantisers cannot express; the message names the recipe change."""


def _require():
    try:
        import brevitas  # noqa: F401
    except ImportError as e:
        raise UsageError(f"--backend brevitas needs brevitas; run `{INSTALL_HINT}`") from e


# -- spec → brevitas quantisers ----------------------------------------------------------------------
def weight_quant(cfg):
    """brevitas weight quantiser class for a quant QConfig (raises Unsupported)."""
    from brevitas.quant import Int8WeightPerChannelFloat, Int8WeightPerChannelFloatMSE
    from brevitas.quant.experimental.float_quant_ocp import FpOCPWeightPerChannelFloat
    from brevitas.quant.experimental.mx_quant_ocp import MXFloat8e4m3Weight, MXInt8Weight

    from quant.formats import FpFormat, IntFormat, MxFormat
    fmt = cfg.format
    if isinstance(fmt, MxFormat):
        if fmt.block != 32:
            raise Unsupported(f"brevitas MX weights use blocks of 32, not {fmt.block}")
        el = fmt.element
        if isinstance(el, IntFormat):
            return MXInt8Weight
        return MXFloat8e4m3Weight.let(bit_width=el.code_bits, exponent_bit_width=el.exp_bits,
                                      mantissa_bit_width=el.man_bits, exponent_bias=el.bias)
    if cfg.granularity != "channel":
        raise Unsupported(f"brevitas backend: {fmt.name} weights per {cfg.granularity} are not in brevitas' core "
                          "quantisers; set `weight_granularity: channel` in the recipe")
    if isinstance(fmt, IntFormat):
        base = Int8WeightPerChannelFloatMSE if cfg.observer == "mse" else Int8WeightPerChannelFloat
        return base.let(bit_width=fmt.bits)
    if isinstance(fmt, FpFormat):
        if fmt.special not in ("finite", "fn", "ieee") or (fmt.code_bits == 8 and (fmt.exp_bits, fmt.man_bits) not in ((4, 3), (5, 2))):
            raise Unsupported(f"brevitas backend: no OCP FP weight quantiser for {fmt.name}")
        return FpOCPWeightPerChannelFloat.let(bit_width=fmt.code_bits, exponent_bit_width=fmt.exp_bits,
                                              mantissa_bit_width=fmt.man_bits, exponent_bias=fmt.bias)
    raise Unsupported(f"brevitas backend: unsupported weight format {fmt.name}")


def act_quant(cfg):
    """brevitas activation quantiser class for a static per-tensor QConfig (raises Unsupported)."""
    from brevitas.quant import ShiftedUint8ActPerTensorFloat, ShiftedUint8ActPerTensorFloatMSE
    from brevitas.quant.experimental.float_quant_ocp import FpOCPActPerTensorFloat, FpOCPActPerTensorFloatMSE

    from quant.formats import FpFormat, IntFormat
    fmt = cfg.format
    if cfg.granularity != "tensor":
        raise Unsupported(f"brevitas backend: {cfg.granularity} activation quantisation is not in brevitas' core "
                          "quantisers; set `act_granularity: tensor` (static, calibrated) in the recipe")
    if isinstance(fmt, IntFormat):
        if fmt.signed:
            raise Unsupported("brevitas backend: activations use unsigned INT with a zero point (uintN)")
        base = ShiftedUint8ActPerTensorFloatMSE if cfg.observer == "mse" else ShiftedUint8ActPerTensorFloat
        return base.let(bit_width=fmt.bits)
    if isinstance(fmt, FpFormat):
        base = FpOCPActPerTensorFloatMSE if cfg.observer == "mse" else FpOCPActPerTensorFloat
        return base.let(bit_width=fmt.code_bits, exponent_bit_width=fmt.exp_bits,
                        mantissa_bit_width=fmt.man_bits, exponent_bias=fmt.bias)
    raise Unsupported(f"brevitas backend: unsupported activation format {fmt.name}")


def check_available(spec, method: str, plan: dict | None = None) -> None:
    """Refuse, before any work, a method or spec this backend cannot run."""
    _require()
    if method not in METHODS:
        raise UsageError(f"--backend brevitas runs {', '.join(METHODS)} ({'; '.join(METHODS.values())}), "
                         f"not {method}; use --backend edgevit for adaround/brecq")
    configs = [p.config for p in plan.values()] if plan else [spec.default, *(c for _, c in spec.overrides)]
    for c in configs:
        if c.weight is not None:
            weight_quant(c.weight)
        if c.act is not None:
            act_quant(c.act)
        if c.softmax is not None:
            raise Unsupported("brevitas backend: softmax output quantisation is not supported; drop softmax_bits")


# -- model conversion ---------------------------------------------------------------------------------
class _BrevitasAttention:
    """Mixin quantising the inputs of q·kᵀ and attn·v with brevitas QuantIdentity modules."""

    def attend(self, q, k):
        return super().attend(self.bq(q), self.bk(k))

    def aggregate(self, attn, v):
        return super().aggregate(attn, self.bv(v))


def to_brevitas(model: nn.Module, plan: dict) -> nn.Module:
    """A copy of `model` with every planned layer replaced by its brevitas counterpart."""
    import brevitas.nn as qnn
    bmodel = copy.deepcopy(model).eval()
    for name, p in plan.items():
        parent, _, leaf = name.rpartition(".")
        owner = bmodel.get_submodule(parent) if parent else bmodel
        old = getattr(owner, leaf)
        cfg = p.config
        kw = {"weight_quant": weight_quant(cfg.weight) if cfg.weight else None,
              "input_quant": act_quant(cfg.act) if cfg.act else None, "return_quant_tensor": False}
        if p.kind == "linear":
            new = qnn.QuantLinear(old.in_features, old.out_features, bias=old.bias is not None, **kw)
        elif p.kind == "conv":
            new = qnn.QuantConv2d(old.in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                                  old.dilation, old.groups, bias=old.bias is not None, padding_mode=old.padding_mode, **kw)
        elif p.kind == "attention":
            old.__class__ = type(f"Brevitas{type(old).__name__}", (_BrevitasAttention, type(old)), {})
            for attr in ("bq", "bk", "bv"):
                setattr(old, attr, qnn.QuantIdentity(act_quant=act_quant(cfg.act), return_quant_tensor=False))
            continue
        else:   # LayerNorm / GELU inputs
            old.register_forward_pre_hook(lambda _m, a, q=qnn.QuantIdentity(
                act_quant=act_quant(cfg.act), return_quant_tensor=False): (q(a[0]),))
            continue
        new.load_state_dict(old.state_dict(), strict=False)
        setattr(owner, leaf, new.eval())
    return bmodel


@torch.no_grad()
def _run(model: nn.Module, calib: torch.Tensor, batch: int, progress=None, desc: str = "") -> None:
    batches = calib.split(batch)
    for x in (progress(batches, desc=desc) if progress else batches):
        model(x)


def brevitas_ptq(bmodel: nn.Module, calib: torch.Tensor, method: str, batch: int = 64, progress=None) -> dict:
    """brevitas' PTQ on a converted model, in place: calibration, optional GPTQ, bias correction."""
    from brevitas.graph.calibrate import bias_correction_mode, calibration_mode
    from brevitas.graph.gptq import gptq_mode
    steps = {}
    t0 = time.perf_counter()
    for m in bmodel.modules():   # stats-initialised weight scales (MSE) initialise on a training-mode pass
        if hasattr(m, "quant_weight") and getattr(m, "weight_quant", None) is not None:
            m.weight_quant.train()
            m.quant_weight()
            m.weight_quant.eval()
    with calibration_mode(bmodel):
        _run(bmodel, calib, batch, progress, "brevitas calibration")
    steps["calibration_s"] = time.perf_counter() - t0
    if method == "gptq":
        t0 = time.perf_counter()
        with torch.no_grad(), gptq_mode(bmodel, use_quant_activations=True, act_order=True) as gptq:
            for _ in range(gptq.num_layers):
                _run(gptq.model, calib, batch)
                gptq.update()
        steps["gptq_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with bias_correction_mode(bmodel):
        _run(bmodel, calib, batch, progress, "brevitas bias correction")
    steps["bias_correction_s"] = time.perf_counter() - t0
    return steps


@torch.no_grad()
def to_edgevit(bmodel: nn.Module, float_model: nn.Module, spec, plan: dict, calib: torch.Tensor) -> tuple[nn.Module, dict]:
    """An edgevit quantised model carrying brevitas' quantised weights, scales and biases."""
    import quant
    from quant.formats import MxFormat
    qmodel = quant.quantize_model(float_model, spec, calib.split(64), plan=plan)
    bmods, qmods = dict(bmodel.named_modules()), dict(qmodel.named_modules())
    folded = dropped = 0
    for name, p in plan.items():
        if p.kind not in ("linear", "conv") or p.config.weight is None:
            continue
        b, m = bmods[name], qmods[name]
        qw = b.quant_weight()
        wq = m.weight_quant
        scale = qw.scale.detach().float()
        if isinstance(wq.fmt, MxFormat):
            scale = scale.reshape(wq.scale.shape)
        else:
            scale = scale.reshape(-1, 1).expand(wq.scale.shape[0], wq.scale.shape[1]).contiguous()
            wq.scale_dtype = "float16" if torch.equal(scale.half().float(), scale) else "float32"
        wq.scale.copy_(scale)
        m.weight.copy_(qw.value.detach())
        m._wq_key = None
        if b.bias is not None:
            if m.bias is not None:
                m.bias.copy_(b.bias.detach())
            elif _fold_into_bn(qmodel, name, b.bias.detach()):
                folded += 1
            else:
                dropped += 1
    quant.calibrate(qmodel, calib.split(64))
    return qmodel, {"bias_folded_into_bn": folded, "bias_dropped": dropped}


def _fold_into_bn(model: nn.Module, name: str, bias: torch.Tensor) -> bool:
    """BN(y + b) = BN with running_mean − b: carries a correction bias for a bias-free conv."""
    parent, _, leaf = name.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    if isinstance(owner, nn.Sequential) and leaf.isdigit() and int(leaf) + 1 < len(owner):
        bn = owner[int(leaf) + 1]
        if isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None:
            bn.running_mean.sub_(bias)
            return True
    return False


def quantize(model: nn.Module, spec, calib: torch.Tensor, plan: dict | None = None, method: str = "rtn",
             progress=None, keep_brevitas: bool = False):
    """(edgevit quantised model, report) through brevitas; with keep_brevitas the report also holds
    brevitas' own fake-quant model under "brevitas_model" (for peer comparisons and QCDQ export)."""
    import quant
    plan = plan if plan is not None else quant.plan_model(model, spec)
    check_available(spec, method, plan)
    t0 = time.perf_counter()
    bmodel = to_brevitas(model, plan)
    steps = brevitas_ptq(bmodel, calib, method, progress=progress)
    qmodel, conv = to_edgevit(bmodel, model, spec, plan, calib)
    report = {"backend": "brevitas", "method": method, "algorithms": METHODS[method], "steps": steps, **conv,
              "brevitas_version": __import__("brevitas").__version__, "seconds": time.perf_counter() - t0,
              "activation_ranges": "re-calibrated by edgevit on the same images"}
    if keep_brevitas:
        report["brevitas_model"] = bmodel
    return qmodel, report


def export_qcdq(bmodel: nn.Module, example: torch.Tensor, path: str) -> None:
    """brevitas' own QCDQ ONNX (QuantizeLinear → Clip → DequantizeLinear) of its fake-quant model."""
    from brevitas.export import export_onnx_qcdq
    export_onnx_qcdq(bmodel.eval(), args=example, export_path=str(path))


def qcdq_file(bmodel: nn.Module, example: torch.Tensor) -> tuple[dict[str, bytes], str]:
    """({file name: bytes}, note) of brevitas' QCDQ export, or ({}, why not) when brevitas cannot export
    this model; the edgevit checkpoint stays the primary artifact either way."""
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "brevitas_qcdq.onnx"
        try:
            export_qcdq(bmodel, example, path)
        except Exception as e:   # brevitas raises many types; the reason goes into the report
            return {}, f"not written: brevitas QCDQ export failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        return {path.name: path.read_bytes()}, path.name
