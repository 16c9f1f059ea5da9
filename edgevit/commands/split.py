"""`edgevit split` (ED-ViT: one ViT → N class-wise sub-models + fusion head) and `edgevit serve-split`."""
from __future__ import annotations

import json
import time
from pathlib import Path

import click

from edgevit.commands.common import console, load, model_options, overwrite_option, print_table
from edgevit.errors import UsageError
from edgevit.stage_options import stage_options


@stage_options("split")
@click.command("split")
@model_options
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Artifact directory to create.")
@overwrite_option()
def split_cmd(model, weights, trust_checkpoint, devices_spec, out, keep, latency, bits, fmt, quantize_fusion, data, eval_data, train_images,
              fusion_images, epochs, batch_size, lr, seed, work_dir, latency_rounds, overwrite):
    """Split MODEL across devices (ED-ViT): class-wise pruned sub-models, distilled, plus a fusion MLP.

    Writes one directory per device (ONNX sub-model; quantised with --bits), fusion/, torch/,
    manifest.json and split_report.json (sizes, MACs, measured latencies, accuracy vs the unsplit model).

    \b
    Examples:
      edgevit split vit-small --devices 4 --out out/split4
      edgevit split vit-small --devices devices.yaml --keep 0.3 --out out/split-het
      edgevit split vit-small --devices 4 --bits w8a8 --fmt int --out out/split4-w8a8
    """
    from edgevit.split.report import report_rows
    from edgevit.split.stage import split_stage
    module, meta = load(model, weights, trust_checkpoint)
    result = split_stage(module, meta, devices_spec, out, keep=keep, latency=latency, bits=bits, fmt=fmt,
                         quantize_fusion=quantize_fusion, data=data, eval_data=eval_data, train_images=train_images,
                         fusion_images=fusion_images, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                         work_dir=work_dir, latency_rounds=latency_rounds, overwrite=overwrite)
    report, devices = result.report, result.plan["devices"]
    cols, rows = report_rows(report)
    print_table(f"{meta.name} split across {len(devices)} devices → {out}", cols, rows)
    a, s, lat = report["accuracy"], report["size"], report["latency"]
    console.print(f"top-1 {a['split_top1']:.2f}% vs {a['original_top1']:.2f}% unsplit ({a['delta_points']:+.2f} pts, "
                  f"{a['eval_images']} images); largest sub-model {s['largest_device_fraction']:.3f}x the "
                  f"original's params; total {s['total_reduction']:.2f}x smaller; parallel latency "
                  + ", ".join(f"b{b} {lat['parallel_vs_original'][b]:.2f}x" for b in lat["parallel_vs_original"])
                  + " of the original")
    pm = report["parity"]["metrics"]
    console.print(f"{bits + ' ' + fmt if bits else 'fp32'} ONNX vs torch split on {pm['n']} images: top-1 agreement "
                  f"{100 * pm['top1_agreement']:.2f}%, max |Δlogit| {pm['max_abs']:.2e}, SQNR {pm['sqnr_db']} dB")


@click.command("serve-split")
@click.argument("artifact", type=click.Path())
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--address", default=None, help="Ray cluster address (ray executor); default: start a local one.")
@click.option("--data", default="auto:1000", show_default=True, help="Images to classify (test split); auto = the model's own data.")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--timeout", "timeout_s", type=float, default=30.0, show_default=True,
              help="Seconds to wait for every device per batch.")
@click.option("--degrade", is_flag=True, help="Predict from the remaining devices when one fails (marked degraded).")
@click.option("--predictions", type=click.Path(dir_okay=False), default=None, help="Write predictions JSON here.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for data subset sampling.")
def serve_split_cmd(artifact, executor, address, data, batch_size, timeout_s, degrade, predictions, seed):
    """Run a split artifact on its devices (local threads or Ray actors) and fuse the predictions.

    \b
    Examples:
      edgevit serve-split out/split4 --data fashion-mnist:1000
      edgevit serve-split out/split4 --executor ray --address auto --degrade
    """
    import numpy as np
    from tqdm import tqdm

    from edgevit.data import load_data, parse_data_spec
    from edgevit.data.preprocess import Preprocess
    from edgevit.split import SplitPlan, make_executor

    if executor == "local" and address:
        raise UsageError("--address only applies to --executor ray")
    spec = parse_data_spec(data)
    plan = SplitPlan(artifact)
    x, y = load_data(spec, Preprocess.from_dict(plan.manifest["preprocess"]), split="test", seed=seed)
    preds, missing, t0 = [], set(), time.perf_counter()
    degraded_images = 0
    with make_executor(executor, plan, timeout_s=timeout_s, degrade=degrade, address=address) as ex:
        t0 = time.perf_counter()
        for i in tqdm(range(0, len(x), batch_size), desc=f"serve ({executor})", leave=False, disable=None):
            p = ex.predict(x[i:i + batch_size].numpy())
            preds.append(p.top1)
            missing.update(p.missing)
            degraded_images += len(p.top1) if p.degraded else 0
        wall = time.perf_counter() - t0
    top1 = np.concatenate(preds)
    labels = plan.manifest["labels"]
    msg = f"{len(top1)} images in {wall:.2f}s ({1e3 * wall / len(top1):.3f} ms/image, batch {batch_size}, {executor})"
    if y is not None:
        msg += f"; top-1 {100.0 * float((top1 == y.numpy()).mean()):.2f}%"
    if missing:
        msg += f"; DEGRADED for {degraded_images} images (missing: {', '.join(sorted(missing))})"
    console.print(msg)
    if predictions:
        Path(predictions).write_text(json.dumps({"top1": top1.tolist(), "labels": [labels[i] for i in top1],
                                                 "degraded_images": degraded_images,
                                                 "missing_devices": sorted(missing)}) + "\n")


COMMANDS = [split_cmd, serve_split_cmd]
