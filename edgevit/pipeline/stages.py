"""One adapter per stage: recipe options (CLI flag names) → that stage's Python API.

`check(options, recipe)` runs before any stage does work (cheap checks only); `run(state, options,
ctx)` returns the new State. Each adapter is the one place that knows a stage's API, so a stage that
grows options (quantize --method, BN folding, ...) needs a change here and nowhere else.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path


from edgevit.errors import StageError, UsageError
from edgevit.pipeline.quantize import quant_recipe, quantize_with
from edgevit.pipeline.state import State

__all__ = ["Context", "quantize_with"]



@dataclass
class Context:
    stage_dir: Path
    seed: int
    key: str = ""
    progress: bool = True
    force: bool = False      # `edgevit pipeline --force`: redo, don't resume a stage's own checkpoints


# -- quantize ---------------------------------------------------------------------------------------

def _requant(state: State, why: str) -> State:
    """Re-apply the recorded quantisation (same spec, same calibration images) to the new float model."""
    if state.quant is None:
        return state
    t0 = time.perf_counter()
    state.qmodel, _, _ = quantize_with(state.float_model, state.meta, state.quant)
    state.notes.append(f"quantisation re-applied after {why}: same spec ({state.quant['fmt']} {state.quant['bits']}, "
                       f"{state.quant.get('method') or 'rtn'}) and the same {state.quant['calib']} calibration "
                       f"images, seed {state.quant['seed']} ({time.perf_counter() - t0:.1f} s)")
    return state


STRUCTURAL = ("rewrite", "split", "stitch")


def check_quantize(options: dict, recipe) -> None:
    """`edgevit quantize`'s up-front checks (spec, method, backend, --bits auto budget, data specs)."""
    import quant
    from edgevit.ptq import FIX_KEYS, METHODS, spec_errors, validate_auto
    from edgevit.data import parse_data_spec
    from edgevit.pipeline.recipe import stage_keys
    named = {p.name: options[k] for k, p in stage_keys("quantize").items() if p is not None and k in options}
    qrecipe = quant_recipe(options.get("recipe"))
    with spec_errors():
        candidates, _, family, bits = validate_auto(options["bits"], options["fmt"], qrecipe,
                                                               {k: named.get(k) for k in FIX_KEYS})
        spec = quant.parse_spec(family, bits, qrecipe, list(options.get("keep-float") or []))
        method = options.get("method") or str(spec.recipe.get("method", "rtn"))
        if method not in METHODS:
            raise quant.SpecError(f"recipe method {method!r} is not one of {', '.join(METHODS)}")
    if options.get("backend") == "brevitas":
        from edgevit.backends import brevitas_backend
        brevitas_backend.check_available(spec, method)
    elif method == "gptq":
        raise UsageError("method gptq is brevitas' algorithm: add `backend: brevitas`")
    kinds = [s.kind for s in recipe.stages]
    later = [k for k in kinds[kinds.index("quantize") + 1:] if k in STRUCTURAL]
    if candidates is not None and later:
        raise UsageError(f"bits auto picks formats per layer name, and {later[0]} renames the layers; "
                         "use a uniform spec here, or put quantize after it")
    parse_data_spec(options["calib"]), parse_data_spec(options["eval-data"])


def run_quantize(state: State, options: dict, ctx: Context) -> State:
    from edgevit.data import load_data, parse_data_spec, resolve_data_spec
    from edgevit.models.train import evaluate
    options = {**options, **{k: resolve_data_spec(options[k], state.meta.preprocess) for k in ("calib", "eval-data")}}
    spec_ = parse_data_spec(options["eval-data"])
    if options.get("eval-limit"):
        spec_ = type(spec_)(spec_.kind, spec_.path, options["eval-limit"])
    x, y = load_data(spec_, state.meta.preprocess, split="test", seed=options["seed"])
    labelled = y is not None and spec_.kind == "fashion-mnist" and len(state.meta.labels) == 10
    t0 = time.perf_counter()
    state.qmodel, spec, info = quantize_with(state.float_model, state.meta, options, (x, y if labelled else None))
    wall = time.perf_counter() - t0
    # the spec as applied: `bits: auto` becomes the per-layer recipe it chose, so re-applying (resume) is exact
    state.quant = dict(options)
    if info["mixed_precision"] is not None:
        for k in ("max-size", "max-latency-ms", "max-drop", "candidates"):
            state.quant[k] = None
        state.quant |= {"recipe": spec.recipe, "fmt": spec.family, "bits": spec.bits}
    report = {"spec": spec.to_dict(), "quantize_wall_s": wall, "eval_images": len(x), "method": info["method"],
              "backend": info["backend"], "graph_fixes": info["graph_fixes"], "mixed_precision": info["mixed_precision"]}
    if labelled:
        report |= {"float_top1": evaluate(state.float_model, x, y), "quant_top1": evaluate(state.qmodel, x, y)}
    (ctx.stage_dir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    state.meta = state.meta.with_stage("quantize", fmt=spec.family, bits=spec.bits, method=info["method"],
                                       backend=info["backend"], calib=options["calib"], seed=options["seed"])
    return state


# -- rewrite ----------------------------------------------------------------------------------------

def check_rewrite(options: dict, recipe) -> None:
    from edgevit.data import parse_data_spec
    from edgevit.rewrite.pipeline import validate_passes
    validate_passes(list(options.get("disable") or []))
    parse_data_spec(options["data"])


def run_rewrite(state: State, options: dict, ctx: Context) -> State:
    from edgevit.data import load_data
    from edgevit.rewrite import load_target, rewrite_model
    from edgevit.split.model import SplitModel
    target = load_target(options["target"])
    x, y = load_data(options["data"], state.meta.preprocess, split="test", seed=options["seed"])
    kw = {"disable": list(options.get("disable") or []), "gelu_form": options.get("gelu")}
    model = state.float_model
    if isinstance(model, SplitModel):   # each device's sub-model is rewritten and checked on its own
        reports = []
        for i, sub in enumerate(model.subs):
            try:
                new, rep = rewrite_model(sub, target, x, state.meta.input_shape, **kw)
            except (AttributeError, TypeError, ValueError) as e:
                raise StageError(f"rewrite cannot handle split sub-model {i} ({type(e).__name__}: {e}); "
                                 "edgevit.rewrite must accept pruned blocks (attn/mlp None)") from e
            model.subs[i] = new
            reports.append(rep)
        report = {"target": target.name, "sub_models": reports}
    else:
        model, report = rewrite_model(model, target, x, state.meta.input_shape, y=y, **kw)
        if options.get("report"):
            from edgevit.rewrite.robustness import robustness
            cal_x, _ = load_data(options["data"], state.meta.preprocess, split="train", seed=options["seed"])
            report["robustness"] = {"before rewrite": robustness(state.float_model, cal_x, x[:128]),
                                    "after rewrite": robustness(model, cal_x, x[:128])}
    (ctx.stage_dir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    state.float_model = model.eval()
    state.meta = state.meta.with_stage("rewrite", target=target.name)
    return _requant(state, f"the {target.name} rewrite")


# -- split ------------------------------------------------------------------------------------------

def check_split(options: dict, recipe) -> None:
    from edgevit.data import parse_data_spec
    from edgevit.split import parse_devices
    parse_devices(str(options["devices"]))
    parse_data_spec(options["data"]), parse_data_spec(options["eval-data"])
    if options["lr"] <= 0:
        raise UsageError("recipe key split.lr must be positive")
    if not 0 < options["latency"] <= 1:
        raise UsageError(f"recipe key split.latency must be in (0, 1], got {options['latency']}")
    if options.get("bits") or options.get("quantize-fusion"):
        # one spec per pipeline: split's own --bits knows only fmt/bits (RTN, no keep-float, no recipe) and
        # returns no float split for later stages; the quantize stage's full spec is re-applied instead
        raise UsageError("recipe keys split.bits/fmt/quantize-fusion are for `edgevit split` alone; in a pipeline "
                         "put a quantize stage before split (its spec and calibration are re-applied to the "
                         "distilled sub-models)")


def run_split(state: State, options: dict, ctx: Context) -> State:
    from edgevit.split.stage import split_stage
    result = split_stage(state.float_model, state.meta, str(options["devices"]), ctx.stage_dir / "split",
                         keep=options["keep"], latency=options["latency"], data=options["data"],
                         eval_data=options["eval-data"], train_images=options["train-images"],
                         fusion_images=options["fusion-images"], epochs=options["epochs"],
                         batch_size=options["batch-size"], lr=options["lr"], seed=options["seed"],
                         work_dir=_work_dir(options, ctx), latency_rounds=options["latency-rounds"], overwrite=True,
                         progress=ctx.progress)
    report, split, devices = result.report, result.model, result.plan["devices"]
    (ctx.stage_dir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    a = report["accuracy"]
    state.notes.append(f"split: {len(devices)} devices, top-1 {a['split_top1']:.2f}% vs {a['original_top1']:.2f}% "
                       f"unsplit (FP32, {a['eval_images']} images); per-device FP32 parts in "
                       f"{ctx.stage_dir / 'split'}")
    state.float_model = split.eval()
    state.meta = result.meta
    return _requant(state, "split distillation (trained sub-models and fusion head)")


# -- stitch -----------------------------------------------------------------------------------------

def _stitch_count(options: dict, depth: int, n_anchors: int) -> int:
    from edgevit.stitch.space import count_configs
    return count_configs(depth, n_anchors, options["kernel"], options["stride"], options["two-way"],
                         options.get("round-trip", False))


def _work_dir(options: dict, ctx: Context) -> Path:
    """Where a training stage keeps its resumable checkpoints: keyed by the stage's inputs, so a re-run after
    a crash resumes them and stale ones are never loaded; `--force` starts over (a user's own `work-dir` is
    never deleted — its checkpoints must match the recipe)."""
    work = ctx.stage_dir.parent / f".{ctx.stage_dir.name}-{ctx.key}.work"
    if ctx.force:
        shutil.rmtree(work, ignore_errors=True)
    return Path(options["work-dir"]) if options.get("work-dir") else work


def check_stitch(options: dict, recipe) -> None:
    """`edgevit stitch`'s own checks (anchors load and stitch, data specs, device), the chosen
    configuration's id against the space's closed-form size, and the budget keys."""
    from edgevit.stitch.options import check_job
    from edgevit.stitch.evaluate import SelectError, parse_amount
    from edgevit.stitch.train import DeviceError, resolve_device
    if not options.get("anchors"):
        raise UsageError("recipe key stitch.anchors is required, e.g. `anchors: vit-tiny,vit-small`")
    names, _, depth = check_job(options["anchors"], options.get("weights"), options["train-data"], options["eval-data"])
    try:
        resolve_device(options["device"])
    except DeviceError as e:
        raise UsageError(str(e)) from None
    cfg, n = options["config"], _stitch_count(options, depth, len(names))
    if cfg != "best" and (isinstance(cfg, bool) or not isinstance(cfg, int) or not 0 <= cfg < n):
        raise UsageError(f"recipe key stitch.config must be `best` or a configuration id in 0..{n - 1} "
                         f"({n} configurations for these anchors, kernel and stride), got {cfg!r}")
    budget = {k: options[k] for k in ("max-macs", "max-latency-ms") if options[k] is not None}
    if budget and cfg != "best":
        raise UsageError("recipe keys stitch.config and stitch.max-macs/max-latency-ms exclude each other")
    try:
        if "max-macs" in budget:
            parse_amount(budget["max-macs"])
    except SelectError as e:
        raise UsageError(f"recipe key stitch.max-macs: {e}") from None
    lat = budget.get("max-latency-ms")
    if lat is not None and (isinstance(lat, bool) or not isinstance(lat, (int, float)) or lat <= 0):
        raise UsageError(f"recipe key stitch.max-latency-ms must be a positive number of ms, got {lat!r}")


def _chosen(rows: list[dict], options: dict) -> dict:
    from edgevit.stitch.evaluate import SelectError, parse_amount, select
    if options["max-macs"] is not None or options["max-latency-ms"] is not None:
        mm = options["max-macs"]
        try:
            return select(rows, parse_amount(mm) if mm is not None else None, options["max-latency-ms"])
        except SelectError as e:
            raise StageError(f"stitch budget: {e}") from e
    if options["config"] == "best":
        return max((r for r in rows if r["pareto"]), key=lambda r: (r["top1"], -r["macs"]))
    return rows[options["config"]]


def run_stitch(state: State, options: dict, ctx: Context) -> State:
    """`edgevit stitch` into this stage's directory (the whole family's artifact, every configuration
    measured), then one configuration, as a standalone network, becomes the pipeline's model."""
    import dataclasses
    from edgevit.stitch.model import ConfigNet
    from edgevit.stitch.options import make_job
    from edgevit.stitch.pipeline import load_stitched
    from edgevit.stitch.pipeline import run_stitch as stitch
    out = ctx.stage_dir / "stitch"
    job = make_job(options, out, _work_dir(options, ctx))
    names, device = job.anchors, job.device
    shutil.rmtree(out, ignore_errors=True)
    manifest = stitch(job, progress=ctx.progress, keep_graphs=options["keep-graphs"])
    model, rows = load_stitched(out)
    row = _chosen(rows, options)
    budget = " and ".join(f"{k} {options[k]}" for k in ("max-macs", "max-latency-ms") if options[k] is not None)
    how = f"most accurate under {budget}" if budget else \
        ("most accurate" if options["config"] == "best" else "chosen by id")
    lat = f", ORT {row['latency_ms']:.3f} ms" if row.get("latency_ms") is not None else ""
    label = f"{row['anchor_name']} (anchor)" if row.get("anchor_name") else row["name"]
    state.notes.append(f"stitch: configuration {row['id']} {label} ({how}): top-1 {row['top1']:.2f}% FP32 on "
                       f"{options['eval-data']}, {row['macs'] / 1e6:.2f}M MACs{lat}; one of {model.num_configs} "
                       f"configurations of {'+'.join(names)} trained on {device}, all in {out}")
    (ctx.stage_dir / "report.json").write_text(json.dumps(
        {"chosen": row, "selection": how, "device": device, "artifact": str(out),
         "metrics": manifest["metrics"]}, indent=2, default=str) + "\n")
    state.float_model = ConfigNet(model, row["id"]).eval()
    state.meta = dataclasses.replace(state.meta, name=f"{'+'.join(names)}#{row['id']}", family="sn-net",
                                     description=f"SN-Net configuration {row['name']}").with_stage(
        "stitch", anchors=names, config=row["id"], route=row["name"], selection=how, device=device)
    return _requant(state, "stitch training (the chosen configuration)")


# -- export -----------------------------------------------------------------------------------------

def _runtimes(options: dict) -> list[str]:
    r = options["runtime"] or ["onnx"]
    return [r] if isinstance(r, str) else list(r)       # the CLI default is one runtime, a recipe may list several


def check_export(options: dict, recipe) -> None:
    """`edgevit export`'s own up-front checks, per listed runtime."""
    from edgevit.artifacts import RUNTIMES, runtime_errors
    from edgevit.data import parse_data_spec
    runtimes = _runtimes(options)
    for r in runtimes:
        if r not in RUNTIMES:
            raise UsageError(f"recipe key export.runtime: the {r} exporter is not built; use {', '.join(RUNTIMES)}")
    if len(set(runtimes)) != len(runtimes):
        raise UsageError("recipe key export.runtime lists a runtime twice")
    if "tflite" in runtimes and importlib.util.find_spec("litert_torch") is None:
        raise UsageError("recipe key export.runtime: tflite needs litert-torch; pip install 'edgevit[tflite]'")
    if "qnn" in runtimes:
        from runtimes.qnn.compile import parse_soc
        from runtimes.qnn.errors import require_qnn
        with runtime_errors():
            for soc in options["soc"]:
                parse_soc(soc)
            require_qnn()
    if options.get("precision") not in (None, "fp32") and runtimes == ["onnx"]:
        raise UsageError("recipe key export.precision applies to tflite/qnn; ONNX precision comes from a quantize stage")
    if options.get("weight-scales", "minmax") != "minmax" and "tflite" not in runtimes:
        raise UsageError("recipe key export.weight-scales applies to runtime tflite")
    if options.get("graph-form", "exact") == "integer" and "quantize" not in [s.kind for s in recipe.stages]:
        raise UsageError("recipe key export.graph-form integer needs a quantize stage before export")
    parse_data_spec(options["parity-data"]), parse_data_spec(options["calib-data"])


def _is_static(model) -> bool:
    """True once the static-shape rewrite ran (on the model or, for a split, on its sub-models)."""
    return any(getattr(m, "edgevit_static_shape", None) is not None for m in model.modules())


CARRIED = {
    "onnx": "quantised graph (low-bit weights + activation rounding in-graph)",
    "tflite": "the {p} grid weights stored as fp32 (float twin), float activations: litert-torch cannot trace "
              "activation rounding",
    "qnn": "QNN bundle carrying the model's own scales",
}


def _export_one(state: State, runtime: str, options: dict, out: Path) -> dict:
    """One artifact through edgevit.artifacts.export_model, the path `edgevit export` takes too."""
    from edgevit.version import __version__
    from edgevit.artifacts import DEFAULT_PRECISION, export_model, parity_data, runtime_errors
    from edgevit.data import resolve_data_spec
    meta, seed = state.meta, options["seed"]
    data = resolve_data_spec(options["parity-data"], meta.preprocess)
    x, y = parity_data(data, meta, seed)
    common = dict(input_shape=meta.input_shape, preprocess=meta.preprocess.to_dict(), labels=list(meta.labels),
                  parity_inputs=x, parity_labels=y, parity_data=f"{data} (test split, seed {seed})",
                  model_info={"name": meta.name, "source": meta.source, "family": meta.family,
                              "reload": {"kind": "pipeline", "state": str(out.parent / "state.pt")},
                              "history": meta.history},
                  overwrite=True, tools={"edgevit": __version__})
    spec = None
    if state.qmodel is not None:
        from runtimes.onnx.quantspec import spec_from_model
        with runtime_errors():
            spec = spec_from_model(state.qmodel)
    precision = (options.get("precision") if runtime != "onnx" else None) or DEFAULT_PRECISION[runtime]
    static = options.get("static-batch") or _is_static(state.model)
    try:
        art = export_model(state.model, meta, spec, out, runtime, precision, x, common, seed=seed,
                           opset=options.get("opset"), static_batch=static,
                           graph_form=options.get("graph-form", "exact"), calib_data=options["calib-data"],
                           soc=tuple(options.get("soc") or ("SM8650",)), parity_images=options.get("parity-images", 16),
                           weight_scales=options.get("weight-scales", "minmax"))
    except UsageError as e:   # bad input was refused before any stage ran: here it is the model that failed
        raise StageError(f"{runtime} export: {e}") from e
    how = CARRIED[runtime].format(p=spec.precision) if spec is not None else art.precision()
    if spec is not None and runtime == "tflite" and precision != "fp32":
        how = f"float twin of the {spec.precision} model, re-quantised to {precision} by ai-edge-quantizer"
    return {"runtime": runtime, "path": str(out), "precision": art.precision(), "carried": how,
            "size_bytes": art.size_bytes, "parity": art.manifest["parity"]["metrics"]}


def run_export(state: State, options: dict, ctx: Context) -> State:
    state.artifacts = [_export_one(state, r, options, ctx.stage_dir / r) for r in _runtimes(options)]
    state.meta = state.meta.with_stage("export", runtimes=_runtimes(options))
    return state


ADAPTERS = {"quantize": (check_quantize, run_quantize), "rewrite": (check_rewrite, run_rewrite),
            "split": (check_split, run_split), "stitch": (check_stitch, run_stitch),
            "export": (check_export, run_export)}
