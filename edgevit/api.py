"""edgevit's public Python API: one verb per stage, the same functions the CLI and the pipeline call.

    import edgevit
    model, meta = edgevit.load_model("timm:deit_tiny_patch16_224")
    q = edgevit.quantize(model, meta, "int", "w8a8", calib="folder:my_photos/")
    q.save("out/q")
    art = edgevit.export("out/q", "out/q-onnx", runtime="onnx")
    print(edgevit.run(art, ["cat.jpg"])[0])            # [(label, probability), …]
    print(edgevit.check_parity(art).metrics)

The structural stages: `rewrite_model` (NPU graph), `split_model` (ED-ViT, N devices), `stitch_models`
(SN-Net family) — named so, because `edgevit.rewrite`, `.split` and `.stitch` are their packages.
Every verb's keyword defaults are its CLI command's (tests/test_api.py checks they agree).

Errors are edgevit.errors.UsageError (bad input; the CLI exits 2) and StageError (a stage failed; exit 1).
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from edgevit.artifacts import ParityCheck, check_parity
from edgevit.errors import UsageError
from edgevit.models.registry import ModelMeta, load_model
from edgevit.ptq.stage import Quantized

__all__ = ["load_model", "quantize", "Quantized", "rewrite_model", "split_model", "stitch_models", "export",
           "load_artifact", "run", "bench", "check_parity", "ParityCheck", "run_pipeline", "ModelMeta"]


def quantize(model: nn.Module, meta: ModelMeta, fmt: str = "int", bits: str = "w8a8", *, method: str | None = None,
             backend: str = "edgevit", calib="auto:256", recipe: dict | str | None = None,
             keep_float: tuple[str, ...] = (), eval_data="auto", eval_limit: int | None = None, seed: int = 0,
             weights: str | None = None, progress=None, **fixes) -> Quantized:
    """Post-training quantisation with `edgevit quantize`'s defaults (graph fixes per model, RTN), evaluated
    against the float model.

    `calib`/`eval_data`: a data spec (`auto:256` — the model's own data —, `folder:PATH[:N]`, `photos`, …),
    preprocessed images as a tensor or array (N, C, H, W), or a torch DataLoader; `eval_data=None` skips the
    evaluation (`bits="auto"` needs it). `fmt` int|fp4|fp6|fp8|mx…, `bits` like w8a8, w4a6 or auto, `method`
    rtn|adaround|brecq (None: the recipe's, else rtn); `fixes`: fold_bn, equalize, bias_correction,
    bn_reestimate and the auto knobs candidates, max_size, max_latency_ms, max_drop, sensitivity
    (None = per-model default). `q.report` holds what `edgevit quantize` prints; `q.save(out)` writes it."""
    from edgevit.ptq.stage import quantize_stage
    return quantize_stage(model, meta, fmt, bits, method=method, backend=backend, calib=calib, recipe=recipe,
                          keep_float=keep_float, eval_data=eval_data, eval_limit=eval_limit, seed=seed,
                          weights=weights, progress=progress, **fixes)


def _loaded(model, meta):
    """(module, meta) from a registry name or an already loaded pair."""
    if isinstance(model, (str, Path)):
        if meta is not None:
            raise UsageError("give a model name, or a module with its ModelMeta, not both a name and a meta")
        return load_model(str(model))
    if meta is None:
        raise UsageError("a module needs its ModelMeta: model, meta = edgevit.load_model(name)")
    return model, meta


def rewrite_model(model, meta: ModelMeta | None = None, target: str = "qnn-htp", *, data="auto:256",
                  disable: tuple[str, ...] = (), gelu: str | None = None, report: bool = True, seed: int = 0):
    """The NPU rewrite (AutoNeural) of `model` (a module + meta, or a registry name) for `target`
    (qnn-htp, ane, …): every pass proven on `data`, target violations before/after, and with `report` the
    W8A16/W8A8/W4A16 robustness of both graphs. Returns `Rewritten` (.model, .meta, .report, .save(out))."""
    from edgevit.rewrite.stage import rewrite_stage
    module, meta = _loaded(model, meta)
    return rewrite_stage(module, meta, target, data=data, disable=tuple(disable), gelu=gelu, report=report, seed=seed)


def split_model(model, meta: ModelMeta | None = None, *, devices: str | int, out: str | Path,
                keep: float = 0.2, latency: float = 0.3, bits: str | None = None, fmt: str = "int",
                quantize_fusion: bool = False, data: str = "auto", eval_data: str = "auto",
                train_images: int = 12000, fusion_images: int = 2000, epochs: int = 4, batch_size: int = 128,
                lr: float = 1e-3, seed: int = 0, work_dir: str | Path | None = None, latency_rounds: int = 100,
                overwrite: bool = False, progress: bool = True):
    """ED-ViT: split a ViT (module + meta, or a registry name) into class-wise pruned, distilled sub-models
    for `devices` (a count or a devices YAML) plus a fusion head; writes the measured artifact at `out`
    (run it with `edgevit serve-split` or `edgevit.split.make_executor`). Returns `SplitResult`
    (.model, .plan, .report with accuracy vs the unsplit model, sizes and latencies)."""
    from edgevit.split.stage import split_stage
    module, meta = _loaded(model, meta)
    return split_stage(module, meta, devices, out, keep=keep, latency=latency, bits=bits, fmt=fmt,
                       quantize_fusion=quantize_fusion, data=data, eval_data=eval_data, train_images=train_images,
                       fusion_images=fusion_images, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                       work_dir=work_dir, latency_rounds=latency_rounds, overwrite=overwrite, progress=progress)


def stitch_models(anchors: str | list[str], out: str | Path, *, overwrite: bool = False, progress: bool = True,
                  **options) -> dict:
    """SN-Net: stitch a family of anchors (e.g. ["vit-tiny", "vit-small", "vit-base"]) into one network
    whose configurations span their accuracy/MACs range; trains, measures every configuration and writes the
    shared-weight artifact at `out`. `options`: `edgevit stitch`'s, by Python name (epochs, kernel, two_way,
    lr, device, …; `edgevit stitch --help`), with its defaults. Returns the artifact's manifest (configs,
    frontier, metrics); pick a configuration with `edgevit.stitch.evaluate.select`."""
    from edgevit.stage_options import with_defaults
    from edgevit.stitch.options import make_job
    from edgevit.stitch.pipeline import run_stitch
    from runtimes.artifact import check_destination
    from runtimes.errors import RuntimeArtifactError
    names = ",".join(anchors) if isinstance(anchors, (list, tuple)) else anchors
    opts = with_defaults("stitch", {**options, "anchors": names})
    job = make_job(opts, out, opts["work-dir"])
    try:
        check_destination(out, overwrite)
    except RuntimeArtifactError as e:
        raise UsageError(str(e)) from e
    return run_stitch(job, progress=progress, keep_graphs=opts["keep-graphs"])


def export(model, out: str | Path, runtime: str = "onnx", **options):
    """A parity-checked artifact of `model` for `runtime` (onnx|tflite|qnn) at `out`; returns the Artifact.

    `model`: a registry name, a directory written by `Quantized.save` / `edgevit quantize`, or a Quantized.
    `options` are `edgevit export`'s (parity_data_spec, seed, opset, static_batch, graph_form, calib_data,
    precision, soc, parity_images, weight_scales, overwrite)."""
    from edgevit.version import __version__
    from edgevit.artifacts import check_request, export_model, parity_data, runtime_errors
    from edgevit.artifacts import export as export_named
    if not isinstance(model, Quantized):
        return export_named(model, out, runtime, **options)
    from edgevit.data import resolve_data_spec
    from runtimes.artifact import check_destination
    from runtimes.onnx.quantspec import spec_from_model
    precision = check_request(runtime, options.pop("precision", None), options.get("weight_scales", "minmax"),
                              tuple(options.get("soc", ("SM8650",))), options.get("graph_form", "exact"), True)
    overwrite, seed = options.pop("overwrite", False), options.get("seed", 0)
    with runtime_errors():
        check_destination(out, overwrite)
    data = resolve_data_spec(options.pop("parity_data_spec", "auto:512"), model.meta.preprocess)
    x, y = parity_data(data, model.meta, seed)
    meta = model.meta
    common = dict(input_shape=meta.input_shape, preprocess=meta.preprocess.to_dict(), labels=list(meta.labels),
                  parity_inputs=x, parity_labels=y, parity_data=f"{data} (test split, seed {seed})",
                  model_info={"name": meta.name, "source": meta.source, "family": meta.family,
                              "history": meta.history},
                  overwrite=overwrite, tools={"edgevit": __version__})
    return export_model(model.model, meta, spec_from_model(model.model), out, runtime, precision, x, common,
                        **options)


def load_artifact(path: str | Path):
    """An exported artifact directory, schema-checked and every file's sha256 verified."""
    from edgevit.artifacts import runtime_errors
    from runtimes.artifact import load_artifact as load
    with runtime_errors():
        return load(path)


def run(artifact, images, top: int = 5, threads: int = 1) -> list[list[tuple[str, float]]]:
    """Top-`top` (label, probability) per image file, with the artifact's own preprocessing and runtime."""
    from edgevit.artifacts import runtime_errors
    from runtimes.preprocess import load_images
    from runtimes.runner import open_runner, run_batched, top_k
    art = artifact if hasattr(artifact, "manifest") else load_artifact(artifact)
    with runtime_errors():
        x = load_images([str(p) for p in images], art.manifest["preprocess"])
        runner = open_runner(art, threads=threads)
    logits = run_batched(runner, x, 1 if isinstance(art.manifest["input"]["shape"][0], int) else len(x))
    return top_k(logits, art.labels, top)


def bench(artifacts, threads: int = 1, warmup: int = 20, iters: int = 200, batch: int = 1,
          progress=None) -> list[dict]:
    """Latency percentiles, throughput, peak RSS and size per artifact, each in its own fresh process (all
    verified before any is timed), with the `--bits auto` cost model's latency where the precision was chosen
    under a budget (`modelled_latency_ms`: an NPU roofline, not this CPU). `progress(path)` is called as each
    one starts."""
    from edgevit.errors import StageError
    from runtimes.bench import bench_many
    paths = [str(getattr(a, "root", a)) for a in artifacts]
    manifests = [load_artifact(p).manifest for p in paths]
    try:
        rows = bench_many(paths, threads, warmup, iters, batch, progress=progress)
    except RuntimeError as e:
        raise StageError(str(e)) from e
    return [{**r, **_cost_model_estimate(m)} for r, m in zip(rows, manifests)]


def _cost_model_estimate(manifest: dict) -> dict:
    """The `--bits auto` cost model's latency for the model an artifact holds (from its history), for
    `bench` to show next to the measured one; {} when the precision was not chosen under a budget."""
    steps = [h for h in (manifest.get("model") or {}).get("history", []) if h.get("modelled_latency_ms") is not None]
    if not steps:
        return {}
    return {"modelled_latency_ms": steps[-1]["modelled_latency_ms"], "cost_model": steps[-1].get("cost_model")}


def run_pipeline(recipe: str | Path, run_dir: str | Path, force: bool = False) -> dict:
    """Run a pipeline recipe (YAML: quantize → split → rewrite → stitch → export) into `run_dir`, resuming
    finished stages; returns the summary `edgevit pipeline` prints."""
    from edgevit.pipeline import load_recipe, run
    return run(load_recipe(recipe), Path(run_dir), force=force)


