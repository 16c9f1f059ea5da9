"""The PTQ stage over quant/: graph-fix defaults, methods, `--bits auto`, checkpoints and plots.

    from edgevit.ptq import ptq, load_checkpoint
    qmodel, prepared, spec, info = ptq(model, meta, {"family": "fp4", "bits": "w4a6", "calib": "auto:256"})

`edgevit quantize`, `edgevit analyze`, `edgevit pipeline` and the benchmarks all call these; the CLI only
parses options and prints.
"""
from edgevit.ptq.auto import DEFAULT_CANDIDATES, auto_precision, parse_size, run_auto, validate_auto
from edgevit.ptq.fixes import graph_defaults, post_fixes, prepare_graph
from edgevit.ptq.plots import plot_pareto, plot_sensitivity
from edgevit.ptq.run import (BACKENDS, FIX_KEYS, METHODS, finite, load_checkpoint, load_sets, progress_bar, ptq,
                             read_recipe, spec_errors)

__all__ = ["ptq", "load_checkpoint", "load_sets", "read_recipe", "spec_errors", "finite", "progress_bar",
           "graph_defaults", "prepare_graph", "post_fixes", "validate_auto", "run_auto", "auto_precision",
           "parse_size", "plot_pareto", "plot_sensitivity", "METHODS", "BACKENDS", "FIX_KEYS", "DEFAULT_CANDIDATES"]
