"""`edgevit sweep`: a quantization grid on Ray (the library call is edgevit.sweep.sweep)."""
from __future__ import annotations

import json
import math

import click

from edgevit.commands.common import console, overwrite_option, print_table
from edgevit.errors import StageError
from edgevit.ptq import finite


def _num(v, spec: str) -> str:
    return "-" if v is None else ("inf" if isinstance(v, float) and math.isinf(v) else format(v, spec))


@click.command("sweep")
@click.argument("grid", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Results directory: cells/<key>.json per finished cell, sweep.json, sweep.md, pareto.png. "
                   "An earlier sweep's directory is resumed: finished cells are not run again.")
@click.option("--address", default=None, metavar="auto|HOST:PORT",
              help="Join a running Ray cluster (`ray start --head`); default: start a local Ray instance.")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Cells in flight at once, one CPU and one torch thread each [default: every CPU of the instance].")
@click.option("--json", "as_json", is_flag=True, help="Print sweep.json's content instead of the table.")
@overwrite_option()
def sweep_cmd(grid, out, address, workers, as_json, overwrite):
    """Run a quantization grid — quantize → (export) → evaluate per cell — as Ray tasks.

    Each cell runs in its own worker process; a worker that dies under a cell gets it once more, then the
    cell is marked failed and the rest go on. Re-running the same command resumes; Ctrl-C keeps every
    finished cell. Exit 1 when a cell failed (re-run to retry just those).

    \b
    GRID.yaml — defaults for every cell, then `grid:` blocks whose lists are crossed:
      name: small
      calib: fashion-mnist:128          # calibration data spec (as --calib)
      eval_limit: 500                   # evaluation images (eval: auto = the model's own data)
      grid:
        - model: [mobilenet-mini, vit-tiny]
          precision: [int:w8a8, int:w4a8, fp4:w4a6]
        - model: vit-tiny
          method: brecq                 # edgevit: rtn|adaround|brecq
          precision: fp4:w4a6
          recipe: {reconstruction: {iters: 100}}
        - model: mobilenet-mini
          tool: [onnxruntime, brevitas] # peers: onnxruntime MinMax|Percentile|Entropy, brevitas rtn|gptq
          precision: [int:w8a8, int:w4a8]
    Cell keys: model weights tool method precision calib eval eval_limit seed recipe export(onnx|tflite|qnn).

    \b
    Examples:
      edgevit sweep grid.yaml --out out/sweep --workers 2
      ray start --head && edgevit sweep grid.yaml --out out/sweep --address auto
    """
    from edgevit.sweep import load_grid, sweep
    g = load_grid(grid)   # every cell validated (and its model hashed) before Ray starts
    res = sweep(g, out, address=address, workers=workers, progress=not as_json, overwrite=overwrite)
    cells = res["cells"]
    if as_json:
        click.echo(json.dumps(finite(res), indent=2))
    else:
        rows = [[c["model"], c["tool"], c["method"], c["precision"], _num(c.get("top1"), ".2f"),
                 _num(c.get("agreement"), ".1f"), _num(c.get("sqnr_db"), ".1f"),
                 _num(c["size_bytes"] / 1e3 if c.get("size_bytes") else None, ".0f"),
                 c.get("status", "pending") if c.get("status") != "failed" else f"failed: {c.get('error')}"]
                for c in cells]
        print_table(f"sweep {res['name']}: {res['cells_run']} run, {res['cells_reused']} reused",
                    ["model", "tool", "method", "precision", "top-1 %", "agree %", "SQNR dB", "size kB", "status"], rows)
        console.print(f"wrote {out}/sweep.json, sweep.md, pareto.png")
    if res.get("cells_failed"):
        raise StageError(f"{res['cells_failed']} of {len(cells)} cells failed (see {out}/sweep.md); "
                         "re-run the same command to retry them")


COMMANDS = [sweep_cmd]
