"""The PTQ stage: one function, `ptq`, shared by `edgevit quantize`, `edgevit pipeline` (which re-applies it
after split, rewrite and stitch) and the benchmarks, so none of them can drift; plus reloading a checkpoint."""
from __future__ import annotations

import contextlib

import torch
from tqdm import tqdm

from edgevit.errors import StageError, UsageError
from edgevit.ptq import auto as ptq_auto
from edgevit.ptq import fixes as ptq_fixes
from quant.reconstruct import ReconConfig, quantize_with_method

METHODS = ("rtn", "adaround", "brecq", "gptq")

BACKENDS = ("edgevit", "brevitas")

FIX_KEYS = ("fold_bn", "equalize", "bias_correction", "bn_reestimate", "candidates", "max_size", "max_latency_ms",
            "max_drop", "sensitivity", "workers", "address")



@contextlib.contextmanager
def spec_errors():
    """quant's SpecError is bad user input here: exit 2 with its one-line reason."""
    import quant
    try:
        yield
    except quant.SpecError as e:
        raise UsageError(str(e)) from e


def load_checkpoint(path: str):
    """(quantised model, ModelMeta) from a directory written by `edgevit quantize`: the float
    architecture comes back through the registry, then quant restores the quantised layers."""
    import quant
    from edgevit.models.registry import ModelMeta, load_model
    with spec_errors():
        info = quant.read_config(path)["model"]
    if "registry_name" not in info:
        raise UsageError(f"{path} does not record which model it was made from; re-run `edgevit quantize`")
    fmodel, _ = load_model(info["registry_name"], info.get("weights"))
    if info.get("graph"):   # BN folded / ReLU6 → ChannelClamp at quantisation time: rebuild that structure
        from quant.equalize import restore_graph
        restore_graph(fmodel, info["graph"])
    with spec_errors():
        qmodel = quant.load_quantized(path, fmodel)
    return qmodel, ModelMeta.from_dict(info["meta"])


def read_recipe(path: str | None) -> dict:
    if path is None:
        return {}
    from edgevit.yaml_file import read_yaml
    recipe = read_yaml(path, "recipe") or {}
    if not isinstance(recipe, dict):
        raise UsageError(f"recipe {path} must be a mapping of options (see `edgevit quantize --help`)")
    return recipe.get("quantize", recipe)


def load_sets(calib: str, eval_data: str, eval_limit: int | None, meta, seed: int):
    """(calib, eval x, eval y or None, note). `photos[:N]` are the real photos: calibration on the even views,
    evaluation (agreement with FP32) on the disjoint odd views — same scenes, different crops and flips."""
    from edgevit.data import calibration_tensor, load_data, parse_data_spec, resolve_data_spec
    calib, eval_data = (resolve_data_spec(d, meta.preprocess) for d in (calib, eval_data))
    cal_x = calibration_tensor(parse_data_spec(calib), meta.preprocess, seed=seed)
    spec = parse_data_spec(eval_data)
    if eval_limit is not None:
        spec = type(spec)(spec.kind, spec.path, eval_limit)
    ev_x, ev_y = load_data(spec, meta.preprocess, split="test", seed=seed)
    labelled = spec.kind == "fashion-mnist" and len(meta.labels) == 10
    return (cal_x, ev_x, ev_y if labelled else None,
            f"calib {calib} ({len(cal_x)} images), eval {eval_data} ({len(ev_x)} images"
            f"{'' if labelled else ', top-1 agreement with FP32'})")


def progress_bar(iterable=None, **kw):
    """tqdm factory handed to quant/ (which imports no tqdm): one bar per calibration / block."""
    return tqdm(iterable, leave=False, mininterval=0.5, disable=None, **kw)   # bars on a terminal only


def finite(o):
    """JSON has no inf/NaN: an infinite SQNR (no error at all) is written as null."""
    if isinstance(o, float) and (o != o or o in (float("inf"), float("-inf"))):
        return None
    if isinstance(o, dict):
        return {k: finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [finite(v) for v in o]
    return o


def calibration_inputs(calib, meta, seed: int = 0) -> torch.Tensor:
    """Calibration images from a data spec (`auto:256`, `folder:PATH`, …), a tensor or array of preprocessed
    images (N, C, H, W), or an iterable of such batches / (images, labels) pairs (a torch DataLoader)."""
    import numpy as np

    from edgevit.data import calibration_tensor, parse_data_spec, resolve_data_spec
    if isinstance(calib, str):
        return calibration_tensor(parse_data_spec(resolve_data_spec(calib, meta.preprocess)), meta.preprocess, seed=seed)
    if isinstance(calib, np.ndarray):
        calib = torch.from_numpy(calib)
    if not isinstance(calib, torch.Tensor):
        calib = torch.cat([b[0] if isinstance(b, (tuple, list)) else torch.as_tensor(b) for b in calib])
    if calib.ndim != 4 or tuple(calib.shape[1:]) != tuple(meta.input_shape[1:]):
        raise UsageError(f"calibration images have shape {tuple(calib.shape)}; the model takes "
                         f"(N, {', '.join(map(str, meta.input_shape[1:]))}) preprocessed images")
    return calib.float()


def ptq(fmodel, meta, opts: dict, eval_x=None, eval_y=None, progress=None):
    """`edgevit quantize`'s PTQ from its parameters by name (family, bits, method, backend, calib, recipe
    — a path or a dict —, keep_float, seed and FIX_KEYS): validate, prepare the graph, optional --bits auto
    (needs eval_x/eval_y), quantise, post-fixes. Returns (qmodel, prepared float model, spec, info).

    Why here: `edgevit pipeline` re-applies exactly this after split/rewrite/stitch, so the CLI and the
    pipeline must not drift.
    """
    import quant
    seed = int(opts.get("seed", 0))
    fixes = {k: opts.get(k) for k in FIX_KEYS}
    with spec_errors():
        recipe = opts.get("recipe") if isinstance(opts.get("recipe"), dict) else read_recipe(opts.get("recipe"))
        candidates, budget, family, bits = ptq_auto.validate_auto(opts["bits"], opts["family"], recipe, fixes)
        spec = quant.parse_spec(family, bits, recipe, list(opts.get("keep_float") or ()))
        method = opts.get("method") or str(spec.recipe.get("method", "rtn"))
        if method not in METHODS:
            raise quant.SpecError(f"recipe method {method!r} is not one of {', '.join(METHODS)}")
        recon = ReconConfig.from_dict({"seed": seed} | (spec.recipe.get("reconstruction") or {}))
    backend = opts.get("backend") or "edgevit"
    if backend == "brevitas":
        from edgevit.backends import brevitas_backend
        brevitas_backend.check_available(spec, method)
    elif method == "gptq":
        raise UsageError("--method gptq is brevitas' algorithm here: add --backend brevitas (pip install edgevit[brevitas])")
    calib_x = calibration_inputs(opts["calib"], meta, seed)
    with spec_errors():
        plan = quant.plan_model(fmodel, spec)
    fix_opts = ptq_fixes.graph_defaults(fmodel, *(fixes[k] for k in ("fold_bn", "equalize", "bias_correction",
                                                                      "bn_reestimate")), method=method)
    prepared, graph, graph_report = ptq_fixes.prepare_graph(fmodel, fix_opts, calib_x)
    auto_report = auto_files = None
    if candidates is not None:
        if eval_x is None:
            raise UsageError("--bits auto needs evaluation images")
        with spec_errors():
            spec, plan, auto_report, auto_files = ptq_auto.run_auto(prepared, spec, candidates, budget, calib_x,
                                                                     eval_x, eval_y, fixes["sensitivity"], seed,
                                                                     fixes["workers"], fixes["address"])
    torch.manual_seed(seed)
    with spec_errors():
        if backend == "brevitas":
            qmodel, method_report = brevitas_backend.quantize(prepared, spec, calib_x, plan=plan, method=method,
                                                              progress=progress, keep_brevitas=True)
        else:
            qmodel, method_report = quantize_with_method(prepared, spec, calib_x, method, recon, plan=plan,
                                                         progress=progress)
    fix_report = ptq_fixes.post_fixes(prepared, qmodel, calib_x, fix_opts)
    if budget is not None and "size" in budget:   # the promise is about the file the user gets
        from quant.checkpoint import weights_file_bytes
        written = weights_file_bytes(qmodel)
        if written > budget["size"]:
            raise StageError(f"--max-size {budget['size']:.0f} B: the quantised weights file would be {written} B "
                             f"(the method or fixes added {written - auto_report['chosen']['size_bytes']:.0f} B after "
                             "the search); raise the budget by that much")
    return qmodel, prepared, spec, {"method": method, "backend": backend, "method_report": method_report,
                                    "graph": graph, "graph_fixes": fix_opts | graph_report | fix_report,
                                    "mixed_precision": auto_report, "auto_files": auto_files, "calib_x": calib_x}

