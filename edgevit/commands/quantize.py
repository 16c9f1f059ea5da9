"""`edgevit quantize`: PTQ of a registry model to a packed checkpoint + report.json."""
from __future__ import annotations

import json

import click

from edgevit.commands.common import console, load, model_options, overwrite_option, print_table
from edgevit.errors import UsageError
from edgevit.stage_options import stage_options
from edgevit.ptq import METHODS, finite, progress_bar, read_recipe, spec_errors, validate_auto


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
    from edgevit.data import parse_data_spec
    from edgevit.ptq.stage import quantize_stage
    from edgevit.report.metrics import human_bytes

    # -- validate everything before any work (ptq() validates again; that is cheap) ----------------
    with spec_errors():
        recipe_dict = read_recipe(recipe)
        _, _, fam, bts = validate_auto(bits, family, recipe_dict, fixes)
        spec = quant.parse_spec(fam, bts, recipe_dict, keep_float)
        quant.check_out_dir(out, force)
        method_ = method or str(spec.recipe.get("method", "rtn"))
        if method_ not in METHODS:
            raise quant.SpecError(f"recipe method {method_!r} is not one of {', '.join(METHODS)}")
    if backend == "brevitas":
        from edgevit.backends import brevitas_backend
        brevitas_backend.check_available(spec, method_)
    elif method_ == "gptq":
        raise UsageError("--method gptq is brevitas' algorithm here: add --backend brevitas (pip install edgevit[brevitas])")
    parse_data_spec(calib), parse_data_spec(eval_data)
    float_model, meta = load(model, weights, trust_checkpoint)
    with spec_errors():
        quant.plan_model(float_model, spec)

    # -- quantise and evaluate: the same function `edgevit.quantize` is ------------------------------
    q = quantize_stage(float_model, meta, family, bits, method=method, backend=backend, calib=calib,
                       recipe=recipe_dict, keep_float=keep_float, eval_data=eval_data, eval_limit=eval_limit,
                       seed=seed, weights=weights, progress=progress_bar, **fixes)
    q.source["registry_name"], q.report["model"] = model, model      # reloaded exactly as the user named it
    sizes = q.save(out, overwrite=force)
    report, acc = q.report, q.report["eval"]
    labelled = "float_top1" in acc
    rows = [["float top-1" if labelled else "images", f"{acc['float_top1']:.2f}%" if labelled else acc["images"]],
            ["quantised top-1" if labelled else "top-1 agreement",
             f"{acc['quant_top1']:.2f}%" if labelled else f"{acc['agreement']:.2f}%"]]
    if labelled:
        rows.append(["top-1 agreement", f"{acc['agreement']:.2f}%"])
    layers = report["layers"]
    sqnrs = [r["output_sqnr_db"] for r in layers if r["output_sqnr_db"] not in (None, float("inf"))]
    rows += [["images evaluated", acc["images"]], ["layers quantised", len(layers)],
             ["min / median output SQNR", f"{min(sqnrs):.1f} / {sorted(sqnrs)[len(sqnrs) // 2]:.1f} dB" if sqnrs else "-"],
             ["size (FP32 → packed)", f"{human_bytes(report['fp32_bytes'])} → {human_bytes(sizes['total_bytes'])} "
              f"({report['size']['ratio_vs_fp32']:.3f}×)"],
             ["quantisation time", f"{report['quantize_wall_s']:.1f} s"]]
    if as_json:
        click.echo(json.dumps(finite({**report, "out": str(out), "checkpoint_bytes": sizes["total_bytes"]}), indent=2))
        return
    print_table(f"{meta.name} {q.spec.family} {q.spec.bits} ({report['method']}, {backend})", ["metric", "value"], rows)
    console.print(f"wrote {out}")


COMMANDS = [quantize_cmd]
