"""Runtime commands: export an artifact, run it on images, benchmark artifacts, check parity."""
from __future__ import annotations

import json
from pathlib import Path

import click

from edgevit.commands.common import console, load, model_options, print_table
from edgevit.errors import StageError, UsageError

RUNTIMES = ("onnx", "tflite", "qnn")
BUILT = {"onnx", "tflite", "qnn"}
DEFAULT_PRECISION = {"onnx": "fp32", "tflite": "fp32", "qnn": "w8a16"}


def _usage(fn, *args, **kwargs):
    """Call a runtimes/ function, turning its errors into the CLI's exit codes."""
    from runtimes.errors import ExportError, ExportFailure, ParityError, RuntimeArtifactError
    try:
        return fn(*args, **kwargs)
    except ExportFailure as e:   # a valid model the exporter cannot express: names the layer and the fallback
        raise StageError(str(e)) from e
    except (RuntimeArtifactError, ExportError) as e:
        raise UsageError(str(e)) from e
    except ParityError as e:
        raise StageError(str(e)) from e


def _is_quantized_dir(model: str) -> bool:
    return Path(model).is_dir()


def _load_any(model: str, weights, trust_checkpoint):
    """(torch reference, ModelMeta, quant spec or None, reload info) for a model name or a quantised checkpoint dir."""
    if _is_quantized_dir(model):
        from edgevit.commands.quantize import load_checkpoint
        from runtimes.onnx.quantspec import spec_from_model
        qmodel, meta = load_checkpoint(model)
        spec = _usage(spec_from_model, qmodel)
        return qmodel, meta, spec, {"kind": "quantized", "path": str(Path(model).resolve())}
    module, meta = load(model, weights, trust_checkpoint)
    reload = {"kind": "registry", "name": model, "weights": str(Path(weights).resolve()) if weights else None}
    return module, meta, None, reload


def _parity_data(spec: str, meta, seed: int):
    from edgevit.data import load_data, parse_data_spec
    x, y = load_data(parse_data_spec(spec), meta.preprocess, split="test", seed=seed)
    if y is not None and len(meta.labels) != int(y.max()) + 1 and len(meta.labels) < int(y.max()) + 1:
        y = None  # the data's labels are not this model's classes: agreement only
    return x.numpy(), (y.numpy() if y is not None else None)


@click.command("export")
@model_options
@click.option("--runtime", type=click.Choice(RUNTIMES), default="onnx", show_default=True)
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Artifact directory to create.")
@click.option("--parity-data", default="fashion-mnist:512", show_default=True,
              help="Real test images for the export-time parity check (fashion-mnist:N or folder:PATH[:N]).")
@click.option("--seed", default=0, show_default=True, help="Seed for the parity subset.")
@click.option("--opset", type=click.IntRange(17, 23), default=None,
              help="ONNX opset (default 17 for FP32, 21 for quantised graphs).")
@click.option("--static-batch", is_flag=True, help="Fix the batch at 1 (NPUs want fully static shapes).")
@click.option("--graph-form", type=click.Choice(["exact", "integer"]), default="exact", show_default=True,
              help="Quantised graphs: 'exact' rounds only where the torch model does; 'integer' (w8a8 CNNs) "
                   "also requantises conv outputs and residual adds so onnxruntime runs integer kernels end to end.")
@click.option("--calib-data", default="fashion-mnist:256", show_default=True,
              help="Training images calibrating the integer form's requantisation scales.")
@click.option("--precision", type=click.Choice(["fp32", "w8a8", "w8a16", "w4a16"]), default=None,
              help="TFLite (fp32|w8a8|w8a16, via ai-edge-quantizer) and QNN (w8a16 default|w8a8|w4a16) precision "
                   "for float models, calibrated on --calib-data. ONNX precision comes from `edgevit quantize`.")
@click.option("--soc", multiple=True, default=("SM8650",), show_default=True,
              help="QNN only: Snapdragon SoC(s) to compile a context binary for (repeat for several).")
@click.option("--parity-images", default=16, show_default=True, type=click.IntRange(1),
              help="QNN only: images run on the (slow) HTP emulator for the parity check.")
@click.option("--weight-scales", type=click.Choice(["minmax", "model"]), default="minmax", show_default=True,
              help="TFLite integer export: 'model' keeps edgevit's own int8 weights and scales.")
@click.option("--overwrite", is_flag=True, help="Replace an existing artifact at --out.")
def export_cmd(model, weights, trust_checkpoint, runtime, out, parity_data, seed, opset, static_batch, graph_form,
               calib_data, precision, soc, parity_images, weight_scales, overwrite):
    """Export MODEL (a model name, or a directory written by `edgevit quantize`) as a runtime artifact.

    The artifact is parity-checked on real test images before it is written; a failing check leaves
    nothing on disk.

    \b
    Examples:
      edgevit export vit-small --runtime onnx --out out/vit-small-onnx
      edgevit export out/q-w8a8 --runtime onnx --out out/vit-small-w8a8-onnx
      edgevit export out/cnn-w8a8 --graph-form integer --out out/cnn-w8a8-int-onnx
      edgevit export mobilenet-mini --runtime tflite --precision w8a8 --out out/cnn-int8-tflite
      edgevit export vit-tiny --runtime qnn --precision w8a16 --soc SM8650 --soc SM8550 --out out/vit-qnn
    """
    from edgevit import __version__
    from edgevit.data import parse_data_spec
    from runtimes.artifact import check_destination
    if runtime not in BUILT:
        raise UsageError(f"the {runtime} exporter is not built yet; use --runtime onnx or tflite")
    if runtime == "onnx" and precision not in (None, "fp32"):
        raise UsageError("ONNX precision comes from the quantised checkpoint: run `edgevit quantize` and export its directory")
    if runtime != "tflite" and weight_scales != "minmax":
        raise UsageError("--weight-scales applies to --runtime tflite")
    precision = precision or DEFAULT_PRECISION[runtime]
    if runtime == "qnn":
        from runtimes.qnn.compile import parse_soc
        from runtimes.qnn.errors import require_qnn
        for s in soc:
            _usage(parse_soc, s)
        _usage(require_qnn)
    parse_data_spec(parity_data)
    parse_data_spec(calib_data)
    _usage(check_destination, out, overwrite)
    if graph_form == "integer" and not _is_quantized_dir(model):
        raise UsageError("--graph-form integer needs a quantised checkpoint; run `edgevit quantize --bits w8a8` first")
    module, meta, spec, reload = _load_any(model, weights, trust_checkpoint)
    x, y = _parity_data(parity_data, meta, seed)
    calib = None
    if graph_form == "integer":
        from edgevit.data import load_data
        calib = load_data(parse_data_spec(calib_data), meta.preprocess, split="train", seed=seed)[0].numpy()
    common = dict(input_shape=meta.input_shape, preprocess=meta.preprocess.to_dict(), labels=list(meta.labels),
                  parity_inputs=x, parity_labels=y, parity_data=f"{parity_data} (test split, seed {seed})",
                  model_info={"name": meta.name, "source": meta.source, "family": meta.family,
                              "reload": reload, "history": meta.history},
                  overwrite=overwrite, tools={"edgevit": __version__})
    if runtime == "tflite":
        art = _export_tflite(module, spec, meta, out, precision, weight_scales, calib_data, seed, common)
    elif runtime == "qnn":
        art = _export_qnn(module, spec, meta, out, x, precision, soc, parity_images, calib_data, seed, common)
    else:
        art = _export_onnx(module, spec, meta, out, x, opset, static_batch, graph_form, calib, common)
    m = art.manifest["parity"]["metrics"]
    console.print(f"wrote {out} ({art.precision()}, {art.size_bytes / 1e6:.3f} MB); parity on {m['n']} images: "
                  f"top-1 agreement {100 * m['top1_agreement']:.2f}%, max abs {m['max_abs']:.2e}, "
                  f"SQNR {m['sqnr_db']} dB")


def _export_tflite(module, spec, meta, out, precision, weight_scales, calib_data, seed, common):
    """litert-torch cannot trace fake-quant modules: a quantised checkpoint goes in as its float twin
    (dequantised low-bit weights); `--weight-scales model` then keeps its int8 weights exactly."""
    from edgevit.data import calibration_tensor
    from runtimes.onnx.quantized import float_twin
    from runtimes.tflite.artifact import export_tflite_artifact
    model = float_twin(module, spec) if spec is not None else module
    calib = calibration_tensor(calib_data, meta.preprocess, seed).numpy() if precision != "fp32" else None
    with console.status(f"converting {meta.name} to TFLite ({precision}) and checking parity"):
        return _usage(export_tflite_artifact, model, out, precision=precision, calibration=calib,
                      calibration_data=calib_data, weight_scales=weight_scales, **common)


def _export_qnn(module, spec, meta, out, x, precision, soc, parity_images, calib_data, seed, common):
    """A float model is made NPU-native first (the qnn-htp rewrite: ViTs need it, CNNs get BN folded);
    a quantised checkpoint is carried with its own scales."""
    import torch

    from edgevit.data import calibration_tensor
    from runtimes.qnn.artifact import export_qnn_artifact
    if spec is None:
        from edgevit.rewrite import load_target, rewrite_model
        with console.status(f"rewriting {meta.name} for qnn-htp"):
            module, _ = rewrite_model(module, load_target("qnn-htp"), torch.from_numpy(x[:32]),
                                      (1, *meta.input_shape[1:]))
    calib = calibration_tensor(calib_data, meta.preprocess, seed).numpy()
    with console.status(f"building the QNN bundle ({precision}), compiling for {', '.join(soc)}, emulator parity"):
        return _usage(export_qnn_artifact, module, out, calibration=calib, calibration_data=calib_data,
                      precision=precision, socs=tuple(soc), parity_images=parity_images, **common)


def _export_onnx(module, spec, meta, out, x, opset, static_batch, graph_form, calib, common):
    from runtimes.onnx.artifact import export_onnx_artifact
    with console.status(f"exporting {meta.name} to ONNX and checking parity on {len(x)} images"):
        return _usage(export_onnx_artifact, module, out, quant_spec=spec, opset=opset,
                      dynamic_batch=not static_batch, graph_form=graph_form, calib_inputs=calib, **common)


@click.command("run")
@click.argument("artifact", type=click.Path(exists=True, file_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--top", default=5, show_default=True, type=click.IntRange(1))
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def run_cmd(artifact, images, top, threads, as_json):
    """Classify IMAGES with an exported ARTIFACT (preprocessing and labels come from its manifest).

    \b
    Example:
      edgevit run out/vit-small-onnx shirt.png boot.jpg
    """
    from runtimes.artifact import load_artifact
    from runtimes.preprocess import load_images
    from runtimes.runner import open_runner, run_batched, top_k
    art = _usage(load_artifact, artifact)
    x = _usage(load_images, list(images), art.manifest["preprocess"])
    runner = _usage(open_runner, art, threads=threads)
    static = isinstance(art.manifest["input"]["shape"][0], int)
    logits = run_batched(runner, x, 1 if static else len(x))
    preds = top_k(logits, art.labels, top)
    if as_json:
        click.echo(json.dumps([{"image": i, "top": [{"label": l, "p": p} for l, p in row]}
                               for i, row in zip(images, preds)], indent=2))
        return
    for image, row in zip(images, preds):
        print_table(image, ["rank", "label", "probability"], [[r + 1, l, f"{p:.4f}"] for r, (l, p) in enumerate(row)])


@click.command("bench")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1))
@click.option("--warmup", default=20, show_default=True, type=click.IntRange(0))
@click.option("--iters", default=200, show_default=True, type=click.IntRange(1))
@click.option("--batch", default=1, show_default=True, type=click.IntRange(1))
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write the rows as JSON here.")
def bench_cmd(artifacts, threads, warmup, iters, batch, json_out):
    """Latency (p50/p90/p99), throughput, peak RSS and size of ARTIFACTS, side by side in one run.

    Each artifact runs in its own fresh process with the same thread count and seeded input.

    \b
    Example:
      edgevit bench out/vit-small-onnx out/vit-small-w8a8-onnx --threads 1 --json bench.json
    """
    from runtimes.artifact import load_artifact
    from runtimes.bench import bench_many
    for a in artifacts:  # verify all before timing any
        _usage(load_artifact, a)
    try:
        rows = bench_many(list(artifacts), threads, warmup, iters, batch,
                          progress=lambda p: console.print(f"[dim]benchmarking {p}[/dim]"))
    except RuntimeError as e:
        raise StageError(str(e)) from e
    base = rows[0]["p50_ms"]
    print_table(f"batch {batch}, {threads} thread(s), {iters} runs after {warmup} warm-up",
                ["artifact", "precision", "form", "p50 ms", "p90 ms", "p99 ms", "img/s", "speed-up p50",
                 "peak RSS MiB", "size MB"],
                [[r["artifact"], r["precision"], r["graph_form"], f"{r['p50_ms']:.3f}", f"{r['p90_ms']:.3f}",
                  f"{r['p99_ms']:.3f}", f"{r['throughput_ips']:.1f}", f"{base / r['p50_ms']:.2f}x",
                  f"{r['peak_rss_mib']:.1f}", f"{r['file_bytes'] / 1e6:.3f}"] for r in rows])
    if json_out:
        Path(json_out).write_text(json.dumps(rows, indent=2) + "\n")
        console.print(f"wrote {json_out}")


@click.command("check-parity")
@click.argument("artifact", type=click.Path(exists=True, file_okay=False))
@click.option("--data", default="fashion-mnist:512", show_default=True, help="Real test images (fashion-mnist:N or folder:PATH[:N]).")
@click.option("--seed", default=1, show_default=True, help="Seed for the image subset (export used 0).")
@click.option("--model", "model_override", default=None,
              help="Torch model to compare with (default: the one recorded in the manifest).")
@click.option("--weights", type=click.Path(dir_okay=False), default=None)
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1))
def check_parity_cmd(artifact, data, seed, model_override, weights, threads):
    """Compare ARTIFACT's outputs with its torch model on real images, against the manifest's thresholds.

    Exit 1 when a threshold fails.

    \b
    Example:
      edgevit check-parity out/vit-small-onnx --data fashion-mnist:512
    """
    from edgevit.data import parse_data_spec
    from runtimes import machine, parity
    from runtimes.artifact import load_artifact
    from runtimes.runner import open_runner, run_batched
    parse_data_spec(data)
    art = _usage(load_artifact, artifact)
    reload = (art.manifest.get("model") or {}).get("reload")
    if model_override:
        module, meta, _, _ = _load_any(model_override, weights, False)
    elif reload and reload.get("kind") == "registry":
        module, meta, _, _ = _load_any(reload["name"], weights or reload.get("weights"), False)
    elif reload and reload.get("kind") == "quantized":
        module, meta, _, _ = _load_any(reload["path"], None, False)
    else:
        raise UsageError(f"{artifact} does not record its torch model; pass --model NAME_OR_QUANTIZED_DIR")
    from edgevit.data.preprocess import Preprocess
    meta = type(meta)(meta.name, Preprocess.from_dict(art.manifest["preprocess"]), meta.labels, meta.source)
    x, y = _parity_data(data, meta, seed)
    import torch
    with torch.no_grad():
        ref = module.eval()(torch.from_numpy(x)).numpy()
    runner = _usage(open_runner, art, threads=threads)
    got = run_batched(runner, x, 1 if isinstance(art.manifest["input"]["shape"][0], int) else 256)
    m = parity.compare(ref, got)
    th = art.manifest["parity"]["thresholds"]
    rows = [["top-1 agreement", f"{100 * m['top1_agreement']:.2f}%",
             f">= {100 * th['top1_agreement']:.2f}%" if "top1_agreement" in th else "-"],
            ["max abs error", f"{m['max_abs']:.3g}", f"<= {th['max_abs']:.3g}" if "max_abs" in th else "-"],
            ["SQNR dB", str(m["sqnr_db"]), f">= {th['sqnr_db']}" if "sqnr_db" in th else "-"]]
    if y is not None:
        rows.append(["top-1 runtime / torch", f"{100 * (got.argmax(-1) == y).mean():.2f}% / "
                     f"{100 * (ref.argmax(-1) == y).mean():.2f}%", "-"])
    print_table(f"{artifact} ({art.precision()}) vs torch on {m['n']} images ({data}, seed {seed})",
                ["metric", "value", "threshold"], rows)
    record = art.manifest["parity"]
    if record.get("machine"):
        console.print(f"recorded at export on {machine.summary(record['machine'])}")
    console.print(f"measured here on {machine.summary()}")
    changed = parity.differences(m, record.get("metrics"))
    if changed:
        console.print("[bold yellow]this machine's result differs from the recorded one[/]: " + "; ".join(changed)
                      + " (integer kernels compute differently on this CPU, or the artifact changed)")
    bad = parity.failures(m, th)
    if bad:
        raise StageError(f"parity failed: {'; '.join(bad)}")
    console.print("parity OK")


COMMANDS = [export_cmd, run_cmd, bench_cmd, check_parity_cmd]
