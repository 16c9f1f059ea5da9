"""One adapter per stage: recipe options (CLI flag names) → that stage's Python API.

`check(options, recipe)` runs before any stage does work (cheap checks only); `run(state, options,
ctx)` returns the new State. Each adapter is the one place that knows a stage's API, so a stage that
grows options (quantize --method, BN folding, ...) needs a change here and nowhere else.
"""
from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from edgevit.errors import StageError, UsageError
from edgevit.pipeline.state import State

CALIB_BATCH = 64
QUANT_HANDLED = {"fmt", "bits", "method", "backend", "calib", "recipe", "keep-float", "eval-data", "eval-limit", "seed"}


@dataclass
class Context:
    stage_dir: Path
    seed: int
    key: str = ""
    progress: bool = True


# -- quantize ---------------------------------------------------------------------------------------

def _quant_recipe(value) -> dict | None:
    if value is None or isinstance(value, dict):
        return value
    from edgevit.commands.quantize import read_recipe
    return read_recipe(value)


def quantize_with(float_model, meta, options: dict):
    """PTQ of `float_model` with the quantize stage's options: (quantised copy, spec, method report).

    The single call the quantize stage and every re-application use; it mirrors `edgevit quantize`
    (method from the flag or the quant recipe, reconstruction knobs from the recipe, edgevit or
    brevitas backend). A flag this adapter does not know yet is refused rather than silently ignored.
    """
    import quant
    from edgevit.commands.quantize import spec_errors
    from edgevit.data import calibration_tensor, parse_data_spec
    from edgevit.pipeline.recipe import stage_defaults
    defaults = stage_defaults("quantize")
    unknown = sorted(k for k, v in options.items() if k not in QUANT_HANDLED and v != defaults.get(k))
    if unknown:
        raise UsageError(f"quantize option(s) {', '.join(unknown)} are not wired into the pipeline yet "
                         "(edgevit/pipeline/stages.py quantize_with); drop them from the recipe")
    with spec_errors():
        spec = quant.parse_spec(options["fmt"], options["bits"], _quant_recipe(options.get("recipe")),
                                list(options.get("keep-float") or []))
        plan = quant.plan_model(float_model, spec)
        method = options.get("method") or str(spec.recipe.get("method", "rtn"))
    calib = calibration_tensor(parse_data_spec(options["calib"]), meta.preprocess, seed=options["seed"])
    torch.manual_seed(options["seed"])
    with spec_errors():
        if options.get("backend", "edgevit") == "brevitas":
            from edgevit.backends import brevitas_backend
            brevitas_backend.check_available(spec, method)
            qmodel, _ = brevitas_backend.quantize(float_model, spec, calib, plan=plan, method=method)
            return qmodel, spec
        try:
            from quant.reconstruct import ReconConfig, quantize_with_method
        except ImportError:   # a quant without adaptive rounding: round-to-nearest only
            if method != "rtn":
                raise UsageError(f"quantize method {method} needs quant.reconstruct, missing here") from None
            return quant.quantize_model(float_model, spec, calib.split(CALIB_BATCH), plan=plan), spec
        recon = ReconConfig.from_dict({"seed": options["seed"]} | (spec.recipe.get("reconstruction") or {}))
        qmodel, _ = quantize_with_method(float_model, spec, calib, method, recon, plan=plan)
        return qmodel, spec


def _requant(state: State, why: str) -> State:
    """Re-apply the recorded quantisation (same spec, same calibration images) to the new float model."""
    if state.quant is None:
        return state
    t0 = time.perf_counter()
    state.qmodel, _ = quantize_with(state.float_model, state.meta, state.quant)
    state.notes.append(f"quantisation re-applied after {why}: same spec ({state.quant['fmt']} {state.quant['bits']}, "
                       f"{state.quant.get('method') or 'rtn'}) and the same {state.quant['calib']} calibration "
                       f"images, seed {state.quant['seed']} ({time.perf_counter() - t0:.1f} s)")
    return state


def check_quantize(options: dict, recipe) -> None:
    import quant
    from edgevit.commands.quantize import spec_errors
    from edgevit.data import parse_data_spec
    with spec_errors():
        quant.parse_spec(options["fmt"], options["bits"], _quant_recipe(options.get("recipe")),
                         list(options.get("keep-float") or []))
    parse_data_spec(options["calib"])


def run_quantize(state: State, options: dict, ctx: Context) -> State:
    from edgevit.data import load_data, parse_data_spec
    from edgevit.models.train import evaluate
    t0 = time.perf_counter()
    state.qmodel, spec = quantize_with(state.float_model, state.meta, options)
    wall = time.perf_counter() - t0
    state.quant = dict(options)
    spec_ = parse_data_spec(options["eval-data"])
    if options.get("eval-limit"):
        spec_ = type(spec_)(spec_.kind, spec_.path, options["eval-limit"])
    x, y = load_data(spec_, state.meta.preprocess, split="test", seed=options["seed"])
    report = {"spec": spec.to_dict(), "quantize_wall_s": wall, "eval_images": len(x),
              "method": options.get("method") or "rtn", "backend": options.get("backend", "edgevit")}
    if y is not None:
        report |= {"float_top1": evaluate(state.float_model, x, y), "quant_top1": evaluate(state.qmodel, x, y)}
    (ctx.stage_dir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    state.meta = state.meta.with_stage("quantize", fmt=options["fmt"], bits=options["bits"],
                                       method=options.get("method") or "rtn", calib=options["calib"], seed=options["seed"])
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


def run_split(state: State, options: dict, ctx: Context) -> State:
    from edgevit.data import load_data, parse_data_spec
    from edgevit.split import DistillRecipe, SplitOptions, build_split, parse_devices, write_split_artifact
    from edgevit.split.pipeline import validate
    devices = parse_devices(str(options["devices"]))
    opts = SplitOptions(keep=options["keep"], train_images=options["train-images"],
                        fusion_images=options["fusion-images"],
                        distill=DistillRecipe(epochs=options["epochs"], batch_size=options["batch-size"],
                                              lr=options["lr"], seed=options["seed"]), seed=options["seed"])
    meta = state.meta
    validate(state.float_model, devices, opts, len(meta.labels))
    x, y = load_data(parse_data_spec(options["data"]), meta.preprocess, split="train", seed=options["seed"])
    xe, ye = load_data(parse_data_spec(options["eval-data"]), meta.preprocess, split="test", seed=options["seed"])
    if y is None or ye is None:
        raise UsageError("recipe split.data / split.eval-data must be labelled (fashion-mnist or class folders)")
    # distillation checkpoints for resuming, keyed by this stage's inputs so stale ones are never loaded
    work = Path(options["work-dir"]) if options.get("work-dir") else ctx.stage_dir.parent / f".{ctx.stage_dir.name}-{ctx.key}.work"
    split, plan = build_split(state.float_model, x, y, devices, opts, work_dir=work, progress=ctx.progress)
    # the split stage's own artifact: one FP32 ONNX sub-model per device + fusion head, measured
    _, report = write_split_artifact(ctx.stage_dir / "split", split, plan, state.float_model, meta, xe, ye,
                                     overwrite=True, rounds=options["latency-rounds"])
    (ctx.stage_dir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    a = report["accuracy"]
    state.notes.append(f"split: {len(devices)} devices, top-1 {a['split_top1']:.2f}% vs {a['original_top1']:.2f}% "
                       f"unsplit (FP32, {a['eval_images']} images); per-device FP32 parts in "
                       f"{ctx.stage_dir / 'split'}")
    state.float_model = split.eval()
    state.meta = meta.with_stage("split", devices=len(devices), keep=options["keep"], epochs=options["epochs"])
    return _requant(state, "split distillation (trained sub-models and fusion head)")


# -- stitch -----------------------------------------------------------------------------------------

def check_stitch(options: dict, recipe) -> None:
    if not options.get("anchors"):
        raise UsageError("recipe key stitch.anchors is required, e.g. `anchors: vit-tiny,vit-small`")
    cfg = options.get("config", "best")
    if cfg != "best" and not (isinstance(cfg, int) and cfg >= 0):
        raise UsageError(f"recipe key stitch.config must be `best` or a configuration id >= 0, got {cfg!r}")


def run_stitch(state: State, options: dict, ctx: Context) -> State:
    from edgevit.stitch.model import ConfigView
    from edgevit.stitch.pipeline import StitchJob, load_stitched
    from edgevit.stitch.pipeline import run_stitch as stitch
    from edgevit.stitch.train import StitchRecipe
    import dataclasses
    names = [a.strip() for a in options["anchors"].split(",") if a.strip()]
    fields = {f.name for f in dataclasses.fields(StitchRecipe)}
    rkw = {k: options[k2] for k, k2 in (("epochs", "epochs"), ("lr", "lr"), ("batch_size", "batch-size"),
                                        ("sampling", "sampling"), ("distill", "distill"), ("seed", "seed"))
           if k in fields}
    out = ctx.stage_dir / "stitch"
    job = StitchJob(names, out, StitchRecipe(**rkw), options["kernel"], options["stride"], options["two-way"],
                    options["lora-rank"], options["train-data"], options["eval-data"], options["calib-images"],
                    Path(options["work-dir"]) if options.get("work-dir") else None, options["latency-iters"])
    if out.exists():
        import shutil
        shutil.rmtree(out)
    stitch(job, progress=ctx.progress, keep_graphs=options["keep-graphs"])
    model, index = load_stitched(out)
    rows = index["configs"] if isinstance(index, dict) and "configs" in index else index
    cfg = options.get("config", "best")
    if cfg == "best":
        cfg = max((r for r in rows if r.get("pareto")), key=lambda r: r["top1"])["id"]
    if cfg >= model.num_configs:
        raise UsageError(f"recipe key stitch.config {cfg} is out of range 0..{model.num_configs - 1}")
    row = next(r for r in rows if r["id"] == cfg)
    state.notes.append(f"stitch: configuration {cfg} ({row['name']}, top-1 {row['top1']}% FP32, "
                       f"{row['macs'] / 1e6:.1f} MMACs) of {model.num_configs}; all configs in {out}")
    state.float_model = ConfigView(model, cfg).eval()
    state.meta = state.meta.with_stage("stitch", anchors=names, config=cfg)
    return _requant(state, "stitch training (selected configuration)")


# -- export -----------------------------------------------------------------------------------------

BUILT_RUNTIMES = ("onnx", "tflite")


def check_export(options: dict, recipe) -> None:
    from edgevit.data import parse_data_spec
    runtimes = options["runtime"] or ["onnx"]
    for r in runtimes:
        if r not in BUILT_RUNTIMES:
            raise UsageError(f"recipe key export.runtime: the {r} exporter is not built into the pipeline yet; "
                             f"use {' or '.join(BUILT_RUNTIMES)}")
    if len(set(runtimes)) != len(runtimes):
        raise UsageError("recipe key export.runtime lists a runtime twice")
    if "tflite" in runtimes and importlib.util.find_spec("litert_torch") is None:
        raise UsageError("recipe key export.runtime: tflite needs litert-torch; pip install 'edgevit[tflite]'")
    parse_data_spec(options["parity-data"])


def _export_one(state: State, runtime: str, options: dict, out: Path) -> tuple[dict, str]:
    """Write one artifact; returns (row for the summary, how the precision is carried)."""
    from edgevit import __version__
    from edgevit.data import load_data
    from runtimes.errors import ExportError, ParityError, RuntimeArtifactError
    meta = state.meta
    x, y = load_data(options["parity-data"], meta.preprocess, split="test", seed=options["seed"])
    x, y = x.numpy(), (y.numpy() if y is not None else None)
    common = dict(input_shape=meta.input_shape, preprocess=meta.preprocess.to_dict(), labels=list(meta.labels),
                  parity_inputs=x, parity_labels=y, parity_data=f"{options['parity-data']} (test, seed {options['seed']})",
                  model_info={"name": meta.name, "source": meta.source, "family": meta.family,
                              "reload": {"kind": "pipeline", "state": str(out.parent / "state.pt")},
                              "history": meta.history},
                  overwrite=True, tools={"edgevit": __version__})
    spec = None
    if state.qmodel is not None:
        from runtimes.onnx.quantized import spec_from_model
        spec = spec_from_model(state.qmodel)
    try:
        if runtime == "onnx":
            from runtimes.onnx.artifact import export_onnx_artifact
            art = export_onnx_artifact(state.model, out, quant_spec=spec, opset=options.get("opset"),
                                       dynamic_batch=not options.get("static-batch"), **common)
            how = "quantised graph (low-bit weights + activation rounding in-graph)" if spec else "fp32"
        else:
            from runtimes.onnx.quantized import float_twin
            from runtimes.tflite.artifact import export_tflite_artifact
            # litert-torch cannot trace fake-quant modules: a quantised model goes in as its float twin
            # (the dequantised low-bit weights; activations float)
            model = float_twin(state.qmodel, spec) if spec is not None else state.float_model
            art = export_tflite_artifact(model, out, **common)
            how = (f"fp32 storage of the {spec.precision} grid weights, float activations "
                   "(activation rounding not expressible via litert-torch)") if spec else "fp32"
    except (ExportError, ParityError, RuntimeArtifactError) as e:
        raise StageError(f"{runtime} export: {e}") from e
    return {"runtime": runtime, "path": str(out), "precision": art.precision(), "carried": how,
            "size_bytes": art.size_bytes, "parity": art.manifest["parity"]["metrics"]}, how


def run_export(state: State, options: dict, ctx: Context) -> State:
    state.artifacts = []
    for runtime in options["runtime"] or ["onnx"]:
        row, _ = _export_one(state, runtime, options, ctx.stage_dir / runtime)
        state.artifacts.append(row)
    state.meta = state.meta.with_stage("export", runtimes=list(options["runtime"] or ["onnx"]))
    return state


ADAPTERS = {"quantize": (check_quantize, run_quantize), "rewrite": (check_rewrite, run_rewrite),
            "split": (check_split, run_split), "stitch": (check_stitch, run_stitch),
            "export": (check_export, run_export)}
