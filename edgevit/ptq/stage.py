"""The quantize stage as one call, for `edgevit quantize` and `edgevit.quantize`: PTQ (`ptq`), the evaluation
against the float model, per-layer SQNR, the report, and the packed checkpoint it is saved into."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from edgevit.errors import UsageError
from edgevit.models.meta import ModelMeta
from edgevit.ptq.run import calibration_inputs, finite, ptq, spec_errors

CALIB_BATCH = 64
EVAL_BATCH = 500


@dataclass
class Quantized:
    """A quantised model (`model`, fake-quant modules that run in torch), the float graph it was made from
    after the graph fixes (`prepared`), its quantisation spec, what the stage measured (`report`: evaluation,
    per-layer SQNR, sizes once saved — report.json) and what it did (`info`)."""
    model: nn.Module
    meta: ModelMeta
    spec: object
    prepared: nn.Module
    info: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)   # registry name and weights, to reload the architecture
    report: dict = field(default_factory=dict)

    def save(self, out: str | Path, overwrite: bool = False) -> dict:
        """Write the packed checkpoint (codes + scales) and report.json that `edgevit export` and
        `load_checkpoint` read; returns the sizes (also added to `report`)."""
        import quant
        if not self.source.get("registry_name"):
            raise UsageError("this model was not loaded by name (edgevit.load_model), so a checkpoint could not "
                             "rebuild its architecture; export it directly with edgevit.export(q, out)")
        extra = dict(self.info.get("extra_files") or {})
        extra.update(self.info.get("auto_files") or {})
        fp32 = self.report.get("fp32_bytes")

        def files(sizes: dict) -> dict:
            self.report["size"] = sizes | ({"ratio_vs_fp32": sizes["total_bytes"] / fp32} if fp32 else {})
            return {"report.json": json.dumps(finite(self.report), indent=2), **extra}

        with spec_errors():
            return quant.save_quantized(self.model, out, force=overwrite, extra_files=files, model_info={
                **self.source, "meta": self.meta.to_dict(), "graph": self.info.get("graph")})


def agreement(fmodel: nn.Module, qmodel: nn.Module, x: torch.Tensor, y: torch.Tensor | None,
              batch: int = EVAL_BATCH) -> dict:
    """Top-1 of both models (when labels are given) and their top-1 agreement, in one pass each."""
    fp, qp = [], []
    with torch.no_grad():
        for i in tqdm(range(0, len(x), batch), desc="evaluate", leave=False, disable=None):
            fp.append(fmodel(x[i:i + batch]).argmax(-1))
            qp.append(qmodel(x[i:i + batch]).argmax(-1))
    fp, qp = torch.cat(fp), torch.cat(qp)
    out = {"images": len(x), "agreement": 100.0 * (fp == qp).double().mean().item()}
    if y is not None:
        out |= {"float_top1": 100.0 * (fp == y).double().mean().item(),
                "quant_top1": 100.0 * (qp == y).double().mean().item()}
    return out


def eval_set(eval_data, meta: ModelMeta, limit: int | None, seed: int):
    """(spec, x, y) for evaluation; y only where the labels are the model's own (Fashion-MNIST models on
    Fashion-MNIST) — any other set is judged by agreement with the float model. An ImageNet model is never
    evaluated on Fashion-MNIST."""
    from edgevit.data import load_data, parse_data_spec, resolve_data_spec
    if not isinstance(eval_data, str):
        x = calibration_inputs(eval_data, meta, seed)
        return "tensor", x, None
    spec = resolve_data_spec(eval_data, meta.preprocess)
    parsed = parse_data_spec(spec)
    if limit is not None:
        parsed = type(parsed)(parsed.kind, parsed.path, limit)
    if parsed.kind == "fashion-mnist" and (len(meta.labels) != 10 or meta.preprocess.channels != 1):
        raise UsageError(f"{meta.name} is not a Fashion-MNIST model ({len(meta.labels)} classes, "
                         f"{meta.preprocess.channels}-channel input); evaluate it on its own data: eval_data "
                         "auto, photos or folder:PATH")
    x, y = load_data(parsed, meta.preprocess, split="test", seed=seed)
    return spec, x, (y if parsed.kind == "fashion-mnist" else None)


def quantize_stage(model: nn.Module, meta: ModelMeta, fmt: str = "int", bits: str = "w8a8", *,
                   method: str | None = None, backend: str = "edgevit", calib="auto:256", recipe=None,
                   keep_float: tuple[str, ...] = (), eval_data="auto", eval_limit: int | None = None, seed: int = 0,
                   weights: str | None = None, progress=None, **fixes) -> Quantized:
    """PTQ of `model` with `edgevit quantize`'s options and defaults, evaluated against the float model on
    `eval_data` (a data spec, images, or None to skip; `bits="auto"` needs it). `fixes`: fold_bn, equalize,
    bias_correction, bn_reestimate and the `--bits auto` knobs (candidates, max_size, max_latency_ms,
    max_drop, sensitivity, and workers/address to run its full sensitivity on Ray), None = the per-model default."""
    import quant

    from edgevit.report.metrics import fp32_size_bytes
    if eval_data is None and str(bits).strip().lower() == "auto":
        raise UsageError("bits='auto' searches per-layer formats on evaluation data: give eval_data")
    spec_name, eval_x, eval_y = eval_set(eval_data, meta, eval_limit, seed) if eval_data is not None else \
        (None, None, None)
    opts = {"family": fmt, "bits": bits, "method": method, "backend": backend, "calib": calib, "recipe": recipe,
            "keep_float": tuple(keep_float), "seed": seed, **fixes}
    t0 = time.perf_counter()
    qmodel, prepared, spec, info = ptq(model, meta, opts, eval_x, eval_y, progress=progress)
    wall = time.perf_counter() - t0
    if backend == "brevitas":   # brevitas' own QCDQ ONNX rides along as an alternative artifact
        from edgevit.backends import brevitas_backend
        info["extra_files"], info["method_report"]["qcdq_onnx"] = brevitas_backend.qcdq_file(
            info["method_report"].pop("brevitas_model"), info["calib_x"][:1])
    calib_name = calib if isinstance(calib, str) else "tensor"
    if isinstance(calib, str):
        from edgevit.data import resolve_data_spec
        calib_name = resolve_data_spec(calib, meta.preprocess)
    report = {"model": meta.name, "spec": spec.to_dict(), "method": info["method"], "backend": info["backend"],
              "method_report": info["method_report"], "calib": calib_name, "seed": seed,
              "eval": None if eval_x is None else {"data": spec_name, "limit": eval_limit,
                                                    **agreement(model, qmodel, eval_x, eval_y)},
              "quantize_wall_s": wall, "fp32_bytes": fp32_size_bytes(model),
              "layers": quant.layer_sqnr(prepared, qmodel, info["calib_x"][:CALIB_BATCH]),
              "graph_fixes": info["graph_fixes"], "mixed_precision": info["mixed_precision"]}
    source = {"registry_name": meta.name if meta.source != "user" or weights else None, "weights": weights}
    qmeta = meta.with_stage("quantize", fmt=spec.family, bits=spec.bits, method=info["method"],
                            backend=info["backend"], calib=calib_name, seed=seed, **_auto_summary(info["mixed_precision"]))
    return Quantized(qmodel, qmeta, spec, prepared, info, source, report)


def _auto_summary(auto: dict | None) -> dict:
    """What `--bits auto` promised, carried in the model's history into every artifact's manifest, so that
    `edgevit bench` can show the cost model's latency next to the measured one."""
    if not auto:
        return {}
    chosen = auto.get("chosen", {})
    return {"budget": auto.get("budget"), "cost_model": auto.get("cost_model"),
            "modelled_latency_ms": chosen.get("latency_ms"), "modelled_bytes": chosen.get("modelled_bytes")}
