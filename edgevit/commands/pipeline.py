"""`edgevit pipeline RECIPE.yaml`: every stage in one resumable run, ending with the summary table."""
from __future__ import annotations

from pathlib import Path

import click

from edgevit.commands.common import console, print_table


def _mb(b) -> str:
    return "-" if b is None else f"{b / 1e6:.3f}"


def _rel(path: str, run_dir: str) -> str:
    try:
        return str(Path(path).relative_to(run_dir))
    except ValueError:
        return path


def print_summary(summary: dict) -> None:
    rows = [[r["runtime"], r["precision"], _mb(r.get("size_bytes")),
             "-" if r["top1"] is None else f"{r['top1']:.2f}", f"{r['latency_p50_ms']:.3f}", _rel(r["path"], summary["run_dir"])]
            for r in summary["rows"]]
    lat = summary["latency"]
    print_table(f"{summary['recipe']}: top-1 on {summary['eval_images']} {summary['eval_data']} test images; "
                f"batch-1 latency p50 over {lat['rounds']} interleaved rounds, 1 thread "
                f"(load avg {lat['loadavg'][0]:.2f})",
                ["runtime", "precision", "size MB", "top-1 %", "p50 ms", f"artifact (in {summary['run_dir']})"], rows)
    for note in summary["notes"]:
        console.print(f"• {note}")
    for r in summary["rows"]:
        if r.get("carried") and r["carried"] != "fp32":
            console.print(f"• {r['runtime']}: {r['carried']}")
    console.print(f"summary: {Path(summary['run_dir']) / 'summary.json'}")


@click.command("pipeline")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--run-dir", type=click.Path(file_okay=False), default=None,
              help="Where stage outputs, artifacts and summary.json go (default runs/<recipe name>).")
@click.option("--force", is_flag=True, help="Redo every stage even when its saved output matches.")
@click.option("--check", "check_only", is_flag=True, help="Validate the recipe and exit.")
def pipeline_cmd(recipe, run_dir, force, check_only):
    """Run RECIPE: model → quantize → rewrite → split | stitch → export, each stage optional.

    Recipe keys are the stages' CLI flags (see `edgevit quantize --help` etc.). Finished stages are
    kept under --run-dir and skipped on a re-run when their inputs and options are unchanged.

    \b
    Examples:
      edgevit pipeline recipes/demo.yaml
      edgevit pipeline recipes/vit-tiny-int8.yaml --run-dir runs/t --force
    """
    from edgevit.pipeline import load_recipe
    from edgevit.pipeline.run import check, run
    r = load_recipe(recipe)
    if check_only:
        check(r)
        console.print(f"{recipe}: OK ({' → '.join(s.kind for s in r.stages)})")
        return
    out = Path(run_dir) if run_dir else Path("runs") / r.name
    summary = run(r, out, force=force, console=console)
    print_summary(summary)


COMMANDS = [pipeline_cmd]
