"""Quantisation-robustness report (AutoNeural's metric): relative RMS error and SQNR = −20·log10(relRMS)
of every layer's output and of the encoder output under W8A16, W8A8 and W4A16.

Quantisation is quant/'s INT PTQ with the plain scheme an NPU compiler applies (QNN's default
encodings): weights symmetric per output channel, activations asymmetric per tensor with a static
min–max range from calibration data, round to nearest. It quantises the same tensors in the original
and the rewritten graph — every weight, every GEMM/conv input, both inputs of each attention matmul,
and the inputs of LayerNorm and GELU (on an NPU the residual stream enters LayerNorm as an integer
tensor; that is where ViTs lose most). quant/ knows LayerNorm and GELU by class; the rewritten
graph's ChannelLayerNorm and Gelu-op modules get quant's own ActQuantizer on their input here, so
before/after numbers differ only by what the rewrite changed.
"""
from __future__ import annotations

import copy
import math
from contextlib import contextmanager

import torch
from torch import nn

import quant
from quant.ptq import apply_plan
from edgevit.errors import UsageError
from edgevit.rewrite.modules import ChannelLayerNorm, GeluOp, SigmoidGelu

_EXTRA_INPUT_POINTS = {ChannelLayerNorm: "norm", GeluOp: "gelu", SigmoidGelu: "gelu"}
_ACT_ATTRS = ("input_quant", "q_quant", "k_quant", "v_quant", "softmax_quant")


def precision_spec(spec: str) -> quant.QuantSpec:
    """quant/ INT spec for `wNaM`, min–max observers throughout, norm and GELU inputs quantised."""
    try:
        return quant.parse_spec("int", spec, recipe={"weight_observer": "minmax", "act_observer": "minmax",
                                                     "quantize_norm_inputs": True, "quantize_gelu_inputs": True})
    except quant.SpecError as e:
        raise UsageError(f"bad precision {spec!r}: {e}") from e


def rel_rms(reference: torch.Tensor, test: torch.Tensor) -> float:
    """‖test − reference‖₂ / ‖reference‖₂ over all elements."""
    ref = reference.double()
    return float((test.double() - ref).norm() / ref.norm().clamp_min(1e-30))


def sqnr_from_rel_rms(rel: float) -> float:
    return float("inf") if rel == 0 else -20.0 * math.log10(rel)


def rel_rms_from_sqnr(sqnr: float) -> float:
    return 0.0 if math.isinf(sqnr) else 10.0 ** (-sqnr / 20.0)


def encoder_name(model: nn.Module) -> str:
    """The module whose output is the encoder output: `norm` for ViTs, `features` for CNNs."""
    names = dict(model.named_modules())
    for cand in ("norm", "features", "encoder"):
        if cand in names and not isinstance(names[cand], nn.Identity):
            return cand
    return ""


def _quantise_input(module: nn.Module, _args):
    q = module.input_quant
    return None if q is None else (q(_args[0]), *_args[1:])


def quantize_for_report(model: nn.Module, spec: quant.QuantSpec, calib: torch.Tensor) -> nn.Module:
    """quant.quantize_model, plus quant's ActQuantizer on the inputs of the NPU-layout norm/GELU
    modules quant/ does not know by class; all calibrated together."""
    plan = quant.plan_model(model, spec)
    qmodel = copy.deepcopy(model).eval()        # quant.quantize_model's steps, with the extra points
    for p in qmodel.parameters():                # added before calibration
        p.requires_grad_(False)
    apply_plan(qmodel, plan)
    qmodel.quant_plan, qmodel.quant_spec = plan, spec
    for _, m in qmodel.named_modules():
        kind = _EXTRA_INPUT_POINTS.get(type(m))
        if kind:
            m.input_quant = quant.ActQuantizer(spec.default.act, axis=1)
            m.quant_kind = kind                     # quant.quantized_layers / layer_sqnr list it
            m.register_forward_pre_hook(_quantise_input)
    quant.calibrate(qmodel, calib)
    return qmodel


@contextmanager
def only_layer(qmodel: nn.Module, keep: str):
    """Within the block, every quantised layer but `keep` computes in float (quantisers detached)."""
    saved = []
    for name, m in quant.quantized_layers(qmodel):
        if name == keep:
            continue
        if getattr(m, "weight_quant", None) is not None:
            saved.append((m, "weight_quant", m.weight_quant))
            m.weight_quant = None
        for attr in _ACT_ATTRS:
            q = getattr(m, attr, None)
            if isinstance(q, quant.ActQuantizer):
                saved.append((m, attr, q))
                setattr(m, attr, nn.Identity())
    try:
        yield
    finally:
        for m, attr, q in saved:
            setattr(m, attr, q)


@torch.no_grad()
def _run(model: nn.Module, x: torch.Tensor, enc: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(encoder output, logits)."""
    out = {}
    h = dict(model.named_modules())[enc].register_forward_hook(lambda _, __, o: out.__setitem__("e", o)) if enc else None
    try:
        y = model(x)
    finally:
        if h is not None:
            h.remove()
    return out.get("e", y), y


@torch.no_grad()
def robustness(model: nn.Module, calib: torch.Tensor, x: torch.Tensor,
               precisions=("w8a16", "w8a8", "w4a16"), top_k: int = 3) -> dict:
    """Per-layer and encoder relRMS/SQNR for each precision; `dominant` names the `top_k` layers whose
    quantisation alone costs the encoder output the most."""
    model = model.eval()
    specs = {p: precision_spec(p) for p in precisions}
    enc = encoder_name(model)
    fp_enc, fp_y = _run(model, x, enc)
    report = {"encoder": enc or "output", "layers": [], "precisions": {},
              "scheme": "quant/ INT: weights per-channel symmetric, activations per-tensor asymmetric static "
                        "(min-max calibration), round-to-nearest; inputs of GEMMs, attention matmuls, "
                        "LayerNorm and GELU quantised"}
    for p, spec in specs.items():
        q = quantize_for_report(model, spec, calib)
        rows = quant.layer_sqnr(model, q, x)
        q_enc, q_y = _run(q, x, enc)
        isolated = {}
        for r in rows:
            with only_layer(q, r["layer"]):
                isolated[r["layer"]] = rel_rms(fp_enc, _run(q, x, enc)[0])
        dominant = sorted(isolated, key=isolated.get, reverse=True)[:top_k]
        enc_rel = rel_rms(fp_enc, q_enc)
        report["layers"] = [r["layer"] for r in rows]
        report["precisions"][p] = {
            "encoder_rel_rms": enc_rel, "encoder_sqnr_db": sqnr_from_rel_rms(enc_rel),
            "logits_sqnr_db": sqnr_from_rel_rms(rel_rms(fp_y, q_y)),
            "top1_agreement": float((fp_y.argmax(1) == q_y.argmax(1)).double().mean() * 100),
            "layers": {r["layer"]: {"kind": r["kind"], "rel_rms": rel_rms_from_sqnr(r["output_sqnr_db"]),
                                    "sqnr_db": r["output_sqnr_db"]} for r in rows},
            "dominant": [{"layer": n, "encoder_rel_rms_alone": isolated[n]} for n in dominant]}
    return report


def summary_line(name: str, report: dict) -> str:
    parts = [f"{p} {r['encoder_sqnr_db']:.1f} dB ({100 * r['encoder_rel_rms']:.2f}%)"
             for p, r in report["precisions"].items()]
    first = next(iter(report["precisions"].values()), None)
    worst = f"; dominated by {', '.join(d['layer'] for d in first['dominant'])}" if first else ""
    return f"{name}: encoder SQNR " + ", ".join(parts) + worst


def plot(reports: dict[str, dict], path) -> None:
    """Per-layer SQNR bars, one panel per model variant, one bar colour per precision."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    fig, axes = plt.subplots(len(reports), 1, figsize=(max(8, 0.12 * max(len(r["layers"]) for r in reports.values())),
                                                      3.2 * len(reports)), squeeze=False)
    for ax, (title, rep) in zip(axes[:, 0], reports.items()):
        names, precs = rep["layers"], list(rep["precisions"])
        width = 0.8 / max(len(precs), 1)
        for i, p in enumerate(precs):
            vals = [min(rep["precisions"][p]["layers"][n]["sqnr_db"], 120) for n in names]
            ax.bar(np.arange(len(names)) + i * width, vals, width, label=f"{p} (encoder "
                   f"{rep['precisions'][p]['encoder_sqnr_db']:.1f} dB)")
        ax.set_title(title)
        ax.set_ylabel("SQNR [dB]")
        ax.set_xticks(np.arange(len(names)) + 0.4, names, rotation=90, fontsize=5)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
