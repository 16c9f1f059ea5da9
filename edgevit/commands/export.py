"""Runtime commands: export an artifact, run it on images, benchmark artifacts, check parity."""
from __future__ import annotations

import json
from pathlib import Path

import click

from edgevit import artifacts
from edgevit.artifacts import runtime_errors
from edgevit.commands.common import console, model_options, overwrite_option, print_table
from edgevit.errors import StageError
from edgevit.stage_options import stage_options


@stage_options("export")
@click.command("export")
@model_options
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Artifact directory to create.")
@overwrite_option()
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
    art = artifacts.export(model, out, runtime, weights=weights, trust_checkpoint=trust_checkpoint,
                           parity_data_spec=parity_data, seed=seed, opset=opset, static_batch=static_batch,
                           graph_form=graph_form, calib_data=calib_data, precision=precision, soc=tuple(soc),
                           parity_images=parity_images, weight_scales=weight_scales, overwrite=overwrite,
                           status=console.status)
    m = art.manifest["parity"]["metrics"]
    console.print(f"wrote {out} ({art.precision()}, {art.size_bytes / 1e6:.3f} MB); parity on {m['n']} images: "
                  f"top-1 agreement {100 * m['top1_agreement']:.2f}%"
                  + (f" ({100 * m['top1_agreement_decisive']:.2f}% on the {m['decisive_n']} that are not near-ties)"
                     if m.get("decisive_n", m["n"]) < m["n"] else "") + f", max abs {m['max_abs']:.2e}, "
                  f"SQNR {m['sqnr_db']} dB")


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
    with runtime_errors():
        art = load_artifact(artifact)
        x = load_images(list(images), art.manifest["preprocess"])
        runner = open_runner(art, threads=threads)
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
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON instead of the table.")
@click.option("--save", type=click.Path(dir_okay=False), default=None, help="Also write the rows as JSON to this file.")
def bench_cmd(artifacts, threads, warmup, iters, batch, as_json, save):
    """Latency (p50/p90/p99), throughput, peak RSS and size of ARTIFACTS, side by side in one run.

    Each artifact runs in its own fresh process with the same thread count and seeded input.

    \b
    Examples:
      edgevit bench out/vit-small-onnx out/vit-small-w8a8-onnx --threads 1
      edgevit bench out/vit-small-onnx out/vit-small-w8a8-onnx --json > bench.json
    """
    from edgevit.api import bench
    rows = bench(list(artifacts), threads, warmup, iters, batch,
                 progress=lambda p: click.echo(f"benchmarking {p}", err=True))
    if save:
        Path(save).write_text(json.dumps(rows, indent=2) + "\n")
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    base = rows[0]["p50_ms"]
    modelled = any("modelled_latency_ms" in r for r in rows)
    print_table(f"batch {batch}, {threads} thread(s), {iters} runs after {warmup} warm-up",
                ["artifact", "precision", "form", "p50 ms", "p90 ms", "p99 ms", "img/s", "speed-up p50",
                 "peak RSS MiB", "size MB"] + (["cost model ms"] if modelled else []),
                [[r["artifact"], r["precision"], r["graph_form"], f"{r['p50_ms']:.3f}", f"{r['p90_ms']:.3f}",
                  f"{r['p99_ms']:.3f}", f"{r['throughput_ips']:.1f}", f"{base / r['p50_ms']:.2f}x",
                  f"{r['peak_rss_mib']:.1f}", f"{r['file_bytes'] / 1e6:.3f}"]
                 + ([f"{r['modelled_latency_ms']:.3f}" if "modelled_latency_ms" in r else "-"] if modelled else [])
                 for r in rows])
    if modelled:
        console.print("cost model ms: what `--bits auto` estimated for the chosen precision on its NPU roofline "
                      "(quant.mixed_precision.CostModel), not a prediction for this CPU")
    if save:
        console.print(f"wrote {save}")


@click.command("check-parity")
@click.argument("artifact", type=click.Path(exists=True, file_okay=False))
@click.option("--data", default="auto:512", show_default=True,
              help="Real test images (auto[:N], fashion-mnist:N, photos[:N] or folder:PATH[:N]); auto = the model's own data (Fashion-MNIST for the bundled models, the photos for ImageNet ones).")
@click.option("--seed", default=1, show_default=True, help="Seed for the image subset (export used 0).")
@click.option("--model", "model_override", default=None,
              help="Torch model to compare with (default: the one recorded in the manifest).")
@click.option("--weights", type=click.Path(dir_okay=False), default=None)
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True, help="Print the measurement as JSON (exit 1 still when it fails).")
def check_parity_cmd(artifact, data, seed, model_override, weights, threads, as_json):
    """Compare ARTIFACT's outputs with its torch model on real images, against the manifest's thresholds.

    Exit 1 when a threshold fails.

    \b
    Example:
      edgevit check-parity out/vit-small-onnx --data fashion-mnist:512
    """
    from runtimes import machine
    from runtimes.parity import max_abs_bar
    c = artifacts.check_parity(artifact, data, seed, model_override, weights, threads)
    m, th = c.metrics, c.thresholds
    if as_json:
        import dataclasses
        click.echo(json.dumps({**dataclasses.asdict(c), "ok": c.ok}, indent=2))
        if c.failures:
            raise StageError(f"parity failed: {'; '.join(c.failures)}")
        return
    bar = f">= {100 * th['top1_agreement']:.2f}%" if "top1_agreement" in th else "-"
    rows = [["top-1 agreement, all images", f"{100 * m['top1_agreement']:.2f}%", "-" if c.ties_excluded else bar],
            [f"  the {m['decisive_n']} that are not near-ties", f"{100 * m['top1_agreement_decisive']:.2f}%",
             bar if c.ties_excluded else "-"],
            ["max abs error", f"{m['max_abs']:.3g}", f"<= {max_abs_bar(th, m):.3g}" if "max_abs" in th else "-"],
            ["SQNR dB", str(m["sqnr_db"]), f">= {th['sqnr_db']}" if "sqnr_db" in th else "-"]]
    if c.top1:
        rows.append(["top-1 runtime / torch", f"{c.top1['runtime']:.2f}% / {c.top1['torch']:.2f}%", "-"])
    print_table(f"{artifact} ({c.precision}) vs torch on {m['n']} images ({c.data})", ["metric", "value", "threshold"], rows)
    if c.recorded_machine:
        console.print(f"recorded at export on {machine.summary(c.recorded_machine)}")
    console.print(f"measured here on {machine.summary(c.machine)}")
    if c.differences:
        console.print("[bold yellow]this machine's result differs from the recorded one[/]: " + "; ".join(c.differences)
                      + " (integer kernels compute differently on this CPU, or the artifact changed)")
    if c.failures:
        raise StageError(f"parity failed: {'; '.join(c.failures)}")
    console.print("parity OK")


COMMANDS = [export_cmd, run_cmd, bench_cmd, check_parity_cmd]
