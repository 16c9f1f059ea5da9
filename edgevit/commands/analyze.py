"""`edgevit analyze`: per-layer sensitivity (quant.sensitivity over edgevit.ptq's prepared graph)."""
from __future__ import annotations

import json
from pathlib import Path

import click
from tqdm import tqdm

from edgevit.commands.common import console, load, model_options, overwrite_option, print_table
from edgevit.ptq import finite, graph_defaults, load_sets, plot_sensitivity, prepare_graph, spec_errors


# ------------------------------------------------------------------ the command
@click.command("analyze")
@model_options
@click.option("--fmt", "family", default="int", show_default=True,
              type=click.Choice(["int", "fp4", "fp6", "fp8", "mxfp4", "mxfp6", "mxfp8", "mxint8"]))
@click.option("--bits", default="w4a8", show_default=True, help="Precision every layer is tried at, e.g. w4a8.")
@click.option("--calib", default="auto:256", show_default=True,
              help="Calibration data; auto = the model's own (Fashion-MNIST, or the photos for ImageNet models).")
@click.option("--eval-data", default="auto", show_default=True,
              help="Evaluation data; auto = the model's own (Fashion-MNIST, or the photos for ImageNet models).")
@click.option("--eval-limit", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--fold-bn/--no-fold-bn", default=None, help="Fold BatchNorm first [default: on for models with BN].")
@click.option("--equalize/--no-equalize", default=None, help="Cross-layer equalisation first [default: with --fold-bn].")
@click.option("--leave-one-out/--no-leave-one-out", default=True, show_default=True,
              help="Also measure each layer left float while the rest is quantised (doubles the time).")
@click.option("--top", default=10, show_default=True, help="Rows in the table of layers that matter.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory for sensitivity.json + .png.")
@click.option("--seed", default=0, show_default=True)
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Measure the layers in N Ray worker processes (1 torch thread each; pip install edgevit[ray]) "
                   "[default: in this process].")
@click.option("--address", default=None, metavar="auto|HOST:PORT",
              help="With --workers: a running Ray cluster instead of a local Ray instance.")
@overwrite_option("force")
def analyze_cmd(model, weights, trust_checkpoint, family, bits, calib, eval_data, eval_limit, fold_bn, equalize,
                leave_one_out, top, out, seed, workers, address, force):
    """Per-layer sensitivity of MODEL at one precision: output SQNR and top-1 drop with only that layer
    quantised, and the top-1 gain with only it left float; a bar plot and a table of the layers that matter.

    \b
    Examples:
      edgevit analyze mobilenet-mini --bits w4a8 --out out/sens-mini
      edgevit analyze mobilenetv2 --bits w8a8 --calib photos --eval-data photos --out out/sens-mnv2
      edgevit analyze vit-small --bits w4a8 --workers 2 --out out/sens-vit-s
    """
    import quant
    from quant.sensitivity import layer_sensitivity, ranked
    with spec_errors():
        spec = quant.parse_spec(family, bits)
        quant.check_out_dir(out, force)
    if workers:
        from edgevit.ray_pool import require_ray
        require_ray()   # the install hint before any work
    fmodel, meta = load(model, weights, trust_checkpoint)
    calib_x, eval_x, eval_y, note = load_sets(calib, eval_data, eval_limit, meta, seed)
    opts = graph_defaults(fmodel, fold_bn, equalize, False, False)
    prepared, _, greport = prepare_graph(fmodel, opts, calib_x)
    with spec_errors():
        qmodel = quant.quantize_model(prepared, spec, calib_x.split(64))
    if workers:
        from edgevit.sweep.sensitivity import layer_sensitivity_parallel
        result = layer_sensitivity_parallel(prepared, qmodel, eval_x, eval_y, leave_one_out=leave_one_out,
                                            workers=workers, address=address,
                                            progress=lambda total: tqdm(total=total, desc="layers", leave=False,
                                                                        disable=None))
    else:
        result = layer_sensitivity(prepared, qmodel, eval_x, eval_y, leave_one_out=leave_one_out,
                                   progress=lambda it: tqdm(list(it), desc="layers", leave=False, disable=None))
    result |= {"model": model, "fmt": family, "bits": bits, "graph": greport, "data": note}
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sensitivity.json").write_text(json.dumps(finite(result), indent=2))
    plot_sensitivity(result["layers"], out_dir / "sensitivity.png", result["metric"])
    cols = ["layer", "kind", "params", "SQNR alone (dB)", "drop alone", "gain if float"]
    rows = [[r["layer"], r["kind"], r["params"], f"{r['only_sqnr_db']:.1f}", f"{r['only_drop']:.2f}",
             f"{r.get('float_gain', float('nan')):.2f}"] for r in ranked(result, top)]
    print_table(f"{meta.name} {family} {bits}: float {result['float_top1']:.2f}% → all quantised "
                f"{result['quant_top1']:.2f}% ({result['metric']})", cols, rows)
    console.print(f"wrote {out_dir / 'sensitivity.json'} and {out_dir / 'sensitivity.png'}")


COMMANDS = [analyze_cmd]


