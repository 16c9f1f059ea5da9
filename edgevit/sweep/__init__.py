"""Quantization grids on Ray: `sweep(grid, out)` runs every quantize → (export) → evaluate cell of a grid
as a Ray task, resumable and fault-tolerant, and writes JSON + Markdown + a Pareto plot as cells finish.

    from edgevit.sweep import sweep
    res = sweep("benchmarks/grids/small.yaml", "out/sweep", workers=2)
    print(res["cells"][0]["sqnr_db"])

`edgevit sweep GRID.yaml --out DIR` is the same call.
"""
from edgevit.sweep.grid import Cell, Grid, load_grid, model_sha256
from edgevit.sweep.results import pareto_front, read_cells
from edgevit.sweep.run import sweep

__all__ = ["sweep", "load_grid", "Grid", "Cell", "model_sha256", "read_cells", "pareto_front"]
