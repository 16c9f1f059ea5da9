"""`edgevit stitch`: SN-Net over a family of anchors; `edgevit stitch select` picks a config under a budget."""
from __future__ import annotations

import json
from pathlib import Path

import click

from edgevit.commands.common import console, overwrite_option, print_table
from edgevit.errors import UsageError
from edgevit.stage_options import Float, stage_options
from edgevit.stitch.options import make_job


@stage_options("stitch")
@click.group("stitch", invoke_without_command=True)
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Artifact directory to create.")
@overwrite_option()
@click.pass_context
def stitch_cmd(ctx, anchors, weights, out, epochs, kernel, stride, two_way, direction, round_trip, lora_rank, sampling, distill,
               distill_teacher, lr, warmup_epochs, anchor_lr_scale, anchor_distill, anchor_prob, batch_size,
               train_data, eval_data, calib_images, keep_graphs, latency_iters, work_dir, device, seed, overwrite):
    """Stitch a family of anchors (SN-Net / SN-Netv2): LS-initialised stitching layers, joint training,
    every configuration's top-1, MACs and ORT latency, the Pareto frontier, one shared-weight artifact.

    \b
    Examples:
      edgevit stitch --anchors vit-tiny,vit-small,vit-base --epochs 3 --out out/stitch
      edgevit stitch --anchors vit-tiny,vit-small --warmup-epochs 2 --anchor-lr-scale 0 --out out/frozen-anchors
      edgevit stitch --anchors vit-tiny,vit-small --two-way --sampling flops --lora-rank 8 --out out/sn2
      edgevit stitch --anchors vit-tiny,vit-small,vit-base --device cuda --out out/stitch-gpu
      edgevit stitch select out/stitch --max-macs 20M
    """
    if ctx.invoked_subcommand is not None:
        return
    from edgevit.stitch.pipeline import run_stitch
    from runtimes.artifact import check_destination
    from runtimes.errors import RuntimeArtifactError
    if not anchors or not out:
        raise UsageError("give --anchors a,b[,c] and --out DIR, e.g. --anchors vit-tiny,vit-small,vit-base --out out/stitch")
    job = make_job({k.replace("_", "-"): v for k, v in ctx.params.items()}, out, work_dir)
    try:
        check_destination(out, overwrite)
    except RuntimeArtifactError as e:
        raise UsageError(str(e)) from e
    manifest = run_stitch(job, keep_graphs=keep_graphs)
    _print_front(manifest)
    m = manifest["metrics"]
    console.print(f"{m['num_configs']} configurations; artifact {m['onnx_bytes'] / 1e6:.2f} MB = "
                  f"{m['onnx_vs_anchors']:.3f}x the anchors; set_config {m['switch_us']:.2f} µs; "
                  f"frontier shortfall vs the anchor line {m['frontier_shortfall_points']:.2f} points → {out}")


def _print_front(manifest: dict) -> None:
    rows = sorted((r for r in manifest["configs"] if r["pareto"] or r["is_anchor"]), key=lambda r: r["macs"])
    print_table("Pareto frontier (top-1 vs MACs) and anchors", ["id", "config", "MACs", "top-1", "ORT ms"],
                [[r["id"], r.get("anchor_name") or r["name"], f"{r['macs'] / 1e6:.2f}M", f"{r['top1']:.2f}%",
                  "-" if r["latency_ms"] is None else f"{r['latency_ms']:.3f}"] for r in rows])


@stitch_cmd.command("select")
@click.argument("artifact", type=click.Path())
@click.option("--max-macs", default=None, help="MACs budget per image, e.g. 20M, 1.5G.")
@click.option("--max-latency-ms", type=Float(0, min_open=True), default=None,
              help="Latency budget (ms, ORT 1 thread, batch 1, as measured at export).")
@click.option("--json", "as_json", is_flag=True, help="Print the chosen configuration as JSON.")
def select_cmd(artifact, max_macs, max_latency_ms, as_json):
    """Pick the most accurate configuration of a stitched artifact under a MACs or latency budget.

    \b
    Example:
      edgevit stitch select out/stitch --max-macs 20M
      edgevit stitch select out/stitch --max-latency-ms 3
    """
    from edgevit.stitch.evaluate import SelectError, parse_amount, select
    from runtimes.artifact import load_artifact
    from runtimes.errors import RuntimeArtifactError
    try:
        art = load_artifact(artifact, verify=False)
        if art.runtime != "stitch":
            raise UsageError(f"{artifact} is a {art.runtime} artifact, not a stitched one; create it with `edgevit stitch`")
        best = select(art.manifest["configs"], parse_amount(max_macs) if max_macs else None, max_latency_ms)
    except (SelectError, RuntimeArtifactError) as e:
        raise UsageError(str(e)) from e
    if as_json:
        click.echo(json.dumps(best, indent=2))
        return
    lat = "-" if best["latency_ms"] is None else f"{best['latency_ms']:.3f} ms"
    console.print(f"config {best['id']} {best['name']}: top-1 {best['top1']:.2f}%, {best['macs'] / 1e6:.2f}M MACs, "
                  f"{lat} → {Path(artifact) / best['file'] if best['file'] else '(graph not kept)'}")


COMMANDS = [stitch_cmd]
