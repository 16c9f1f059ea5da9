"""`edgevit quantize`: PTQ of a registry model to a packed checkpoint + report.json."""
from __future__ import annotations

import json
import time

import click
import torch
from tqdm import tqdm

from edgevit.commands.common import console, load, model_options, overwrite_option, print_table
from edgevit.errors import UsageError
from edgevit.stage_options import stage_options
from edgevit.ptq import METHODS, finite, progress_bar, ptq, read_recipe, spec_errors, validate_auto

CALIB_BATCH = 64


def _accuracy(fmodel, qmodel, x, y, batch: int) -> dict:
    """Top-1 of both models (labels given) and their top-1 agreement, in one pass each."""
    fp, qp = [], []
    with torch.no_grad():
        for i in tqdm(range(0, len(x), batch), desc="evaluate", leave=False, disable=None):
            fp.append(fmodel(x[i:i + batch]).argmax(-1))
            qp.append(qmodel(x[i:i + batch]).argmax(-1))
    fp, qp = torch.cat(fp), torch.cat(qp)
    out = {"images": len(x), "agreement": 100.0 * (fp == qp).double().mean().item()}
    if y is not None:
        out |= {"float_top1": 100.0 * (fp == y).double().mean().item(), "quant_top1": 100.0 * (qp == y).double().mean().item()}
    return out


@stage_options("quantize")
@click.command("quantize")
@model_options
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory (checkpoint + report.json).")
@click.option("--json", "as_json", is_flag=True, help="Print the report (report.json's content) instead of the table.")
@overwrite_option("force")
def quantize_cmd(model, weights, trust_checkpoint, family, bits, method, backend, calib, out, recipe, keep_float,
                 eval_data, eval_limit, seed, force, as_json, **fixes):
    """Post-training quantisation of MODEL to INT / FP / MX formats; writes a packed checkpoint.

    \b
    Examples:
      edgevit quantize vit-small --fmt fp4 --bits w4a6 --calib fashion-mnist:256 --out out/vit-s-w4a6
      edgevit quantize vit-small --fmt int --bits w8a8 --keep-float head --eval-limit 2000 --out out/vit-s-w8a8
      edgevit quantize vit-small --fmt fp4 --bits w4a6 --method brecq --out out/vit-s-w4a6-brecq
      edgevit quantize mobilenetv2 --bits w4a8 --method adaround --calib folder:photos/ --eval-data folder:photos/ --out out/mnv2
    """
    import quant
    from edgevit.data import load_data, parse_data_spec, resolve_data_spec
    from edgevit.report.metrics import fp32_size_bytes, human_bytes

    # -- validate everything before any work (ptq() validates again; that is cheap) ----------------
    asked = dict(family=family, bits=bits)   # `--bits auto` is resolved inside ptq()
    with spec_errors():
        recipe_dict = read_recipe(recipe)
        _, _, family, bits = validate_auto(bits, family, recipe_dict, fixes)
        spec = quant.parse_spec(family, bits, recipe_dict, keep_float)
        quant.check_out_dir(out, force)
        method = method or str(spec.recipe.get("method", "rtn"))
        if method not in METHODS:
            raise quant.SpecError(f"recipe method {method!r} is not one of {', '.join(METHODS)}")
    if backend == "brevitas":
        from edgevit.backends import brevitas_backend
        brevitas_backend.check_available(spec, method)
    elif method == "gptq":
        raise UsageError("--method gptq is brevitas' algorithm here: add --backend brevitas (pip install edgevit[brevitas])")
    parse_data_spec(calib), parse_data_spec(eval_data)
    float_model, meta = load(model, weights, trust_checkpoint)
    calib, eval_data = (resolve_data_spec(d, meta.preprocess) for d in (calib, eval_data))
    eval_spec = parse_data_spec(eval_data)
    if eval_limit is not None:
        eval_spec = type(eval_spec)(eval_spec.kind, eval_spec.path, eval_limit)
    with spec_errors():
        quant.plan_model(float_model, spec)
    labelled = eval_spec.kind == "fashion-mnist" and len(meta.labels) == 10
    eval_x, eval_y = load_data(eval_spec, meta.preprocess, split="test", seed=seed)
    if not labelled:
        eval_y = None   # other label spaces: report agreement with the float model only

    # -- quantise: the same function `edgevit pipeline` calls ---------------------------------------
    t0 = time.perf_counter()
    opts = dict(**asked, method=method, backend=backend, calib=calib, recipe=recipe_dict,
                keep_float=keep_float, seed=seed, **fixes)
    qmodel, fmodel, spec, info = ptq(float_model, meta, opts, eval_x, eval_y, progress=progress_bar)
    quant_s = time.perf_counter() - t0
    calib_x, method_report, graph = info["calib_x"], info["method_report"], info["graph"]
    auto_report, auto_files = info["mixed_precision"], info["auto_files"] or {}
    extra_files = {}
    if backend == "brevitas":   # brevitas' own QCDQ ONNX rides along as an alternative artifact
        from edgevit.backends import brevitas_backend
        extra_files, method_report["qcdq_onnx"] = brevitas_backend.qcdq_file(method_report.pop("brevitas_model"),
                                                                             calib_x[:1])
    acc = _accuracy(float_model, qmodel, eval_x, eval_y, 500)
    layers = quant.layer_sqnr(fmodel, qmodel, calib_x[:CALIB_BATCH])

    qmeta = meta.with_stage("quantize", fmt=family, bits=bits, method=method, backend=backend, calib=calib, seed=seed)
    report = {"model": model, "spec": spec.to_dict(), "method": method, "backend": backend,
              "method_report": method_report, "calib": calib, "seed": seed,
              "eval": {"data": eval_data, "limit": eval_limit, **acc}, "quantize_wall_s": quant_s,
              "fp32_bytes": fp32_size_bytes(float_model), "layers": layers,
              "graph_fixes": info["graph_fixes"], "mixed_precision": auto_report}

    def report_file(sizes: dict) -> dict:
        report["size"] = sizes | {"ratio_vs_fp32": sizes["total_bytes"] / report["fp32_bytes"]}
        return {"report.json": json.dumps(finite(report), indent=2), **extra_files, **auto_files}

    with spec_errors():
        sizes = quant.save_quantized(qmodel, out, model_info={"registry_name": model, "weights": weights,
                                                              "meta": qmeta.to_dict(), "graph": graph},
                                     force=force, extra_files=report_file)
    rows = [["float top-1" if labelled else "images", f"{acc['float_top1']:.2f}%" if labelled else acc["images"]],
            ["quantised top-1" if labelled else "top-1 agreement",
             f"{acc['quant_top1']:.2f}%" if labelled else f"{acc['agreement']:.2f}%"]]
    if labelled:
        rows.append(["top-1 agreement", f"{acc['agreement']:.2f}%"])
    sqnrs = [r["output_sqnr_db"] for r in layers if r["output_sqnr_db"] not in (None, float("inf"))]
    rows += [["images evaluated", acc["images"]], ["layers quantised", len(layers)],
             ["min / median output SQNR", f"{min(sqnrs):.1f} / {sorted(sqnrs)[len(sqnrs) // 2]:.1f} dB" if sqnrs else "-"],
             ["size (FP32 → packed)", f"{human_bytes(report['fp32_bytes'])} → {human_bytes(sizes['total_bytes'])} "
              f"({report['size']['ratio_vs_fp32']:.3f}×)"],
             ["quantisation time", f"{quant_s:.1f} s"]]
    if as_json:
        click.echo(json.dumps(finite({**report, "out": str(out), "checkpoint_bytes": sizes["total_bytes"]}), indent=2))
        return
    print_table(f"{meta.name} {family} {bits} ({method}, {backend})", ["metric", "value"], rows)
    console.print(f"wrote {out}")


COMMANDS = [quantize_cmd]
