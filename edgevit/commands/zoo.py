"""Model-zoo commands: models, info, eval, train, zoo-eval."""
from __future__ import annotations

import json

import click

from edgevit.commands.common import console, load, model_options, print_table
from edgevit.errors import UsageError


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models_cmd(as_json: bool):
    """List the models the registry resolves.

    \b
    Example:
      edgevit models
    """
    from edgevit.models.registry import list_models
    rows = list_models()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    print_table("edgevit models", ["name", "source", "data", "test top-1", "description"],
                [[r["name"], r["source"], r["data"], "-" if r["test_top1"] is None else f"{r['test_top1']:.2f}%",
                  r["description"]] for r in rows])


@click.command("info")
@model_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def info_cmd(model, weights, trust_checkpoint, as_json):
    """Parameters, MACs/FLOPs, size and input spec of MODEL.

    \b
    Example:
      edgevit info vit-small
    """
    from edgevit.report.metrics import count_macs, count_params, fp32_size_bytes, human_bytes, human_count
    module, meta = load(model, weights, trust_checkpoint)
    macs = count_macs(module, meta.input_shape)
    info = {"name": meta.name, "source": meta.source, "params": count_params(module), "macs": macs,
            "flops": 2 * macs, "fp32_bytes": fp32_size_bytes(module), "input_shape": list(meta.input_shape),
            "preprocess": meta.preprocess.to_dict(), "num_labels": len(meta.labels)}
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    pre = meta.preprocess
    print_table(f"{meta.name}: {meta.description}", ["field", "value"], [
        ["parameters", human_count(info["params"])], ["MACs (batch 1)", human_count(macs)],
        ["FLOPs (batch 1)", human_count(2 * macs)], ["FP32 size", human_bytes(info["fp32_bytes"])],
        ["input", "x".join(map(str, meta.input_shape)) + " float32"],
        ["preprocess", f"resize {pre.size}, {pre.channels} ch, mean {pre.mean}, std {pre.std}"],
        ["labels", f"{len(meta.labels)} ({', '.join(meta.labels[:3])}, ...)"]])


@click.command("eval")
@model_options
@click.option("--data", default="fashion-mnist", show_default=True,
              help="fashion-mnist (10k test set), fashion-mnist:N (seeded subset) or folder:PATH (labelled).")
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True, help="Seed for subset sampling.")
def eval_cmd(model, weights, trust_checkpoint, data, batch_size, seed):
    """Top-1 accuracy of MODEL on a labelled data set.

    \b
    Example:
      edgevit eval vit-small --data fashion-mnist
    """
    from edgevit.data import load_data, parse_data_spec
    from edgevit.models.train import evaluate
    spec = parse_data_spec(data)
    module, meta = load(model, weights, trust_checkpoint)
    if spec.kind == "fashion-mnist" and len(meta.labels) != 10:
        raise UsageError(f"{meta.name} predicts {len(meta.labels)} classes but Fashion-MNIST has 10; "
                         "evaluate it on --data folder:PATH with one sub-folder per class")
    x, y = load_data(spec, meta.preprocess, split="test", seed=seed)
    if y is None:
        raise UsageError(f"{data} has no labels; use a folder with one sub-folder per class")
    acc = evaluate(module, x, y, batch_size=batch_size, progress=True, desc=f"eval {meta.name}")
    console.print(f"{meta.name}: top-1 {acc:.2f}% on {len(y)} images ({data})")


@click.command("train")
@click.argument("model", required=False)
@click.option("--all", "train_all", is_flag=True, help="Train every bundled model in turn.")
@click.option("--epochs", type=click.IntRange(1), default=None, help="Override the recipe's epochs.")
@click.option("--seed", type=int, default=None, help="Override the recipe's seed.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Where to write weights + record (default: the bundled weights folder).")
@click.option("--work-dir", type=click.Path(file_okay=False), default=None,
              help="Checkpoint folder for resuming (default .edgevit-train/MODEL).")
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda.")
def train_cmd(model, train_all, epochs, seed, out, work_dir, device):
    """Train a bundled Fashion-MNIST model from scratch with its recorded recipe (resumable).

    \b
    Example:
      edgevit train vit-tiny --epochs 2 --out out/weights
    """
    from edgevit.models import bundled
    from edgevit.models.zoo_train import train_bundled
    names = list(bundled.BUNDLED) if train_all else [model]
    if not train_all and model not in bundled.BUNDLED:
        raise UsageError(f"train takes a bundled model ({', '.join(bundled.BUNDLED)}) or --all")
    for name in names:
        record = train_bundled(name, out, work_dir if not train_all else None, epochs, seed, device=device)
        console.print(f"{name}: test top-1 {record['test_top1']:.2f}% in {record['train_wall_s']:.0f}s")


@click.command("zoo-eval")
def zoo_eval_cmd():
    """Evaluate every bundled model on the full Fashion-MNIST test set (params, MACs, top-1).

    The whole pipeline on the embedded default is `make demo` = `edgevit pipeline recipes/demo.yaml`.

    \b
    Example:
      edgevit zoo-eval
    """
    from edgevit.data import load_data
    from edgevit.models import bundled
    from edgevit.models.registry import load_model
    from edgevit.models.train import evaluate
    from edgevit.report.metrics import count_macs, count_params, human_count
    rows = []
    for name in bundled.BUNDLED:
        module, meta = load_model(name)
        x, y = load_data("fashion-mnist", meta.preprocess)
        acc = evaluate(module, x, y, progress=True, desc=name)
        rows.append([name, human_count(count_params(module)), human_count(count_macs(module, meta.input_shape)),
                     f"{acc:.2f}%"])
    print_table("bundled models on the Fashion-MNIST test set (10,000 images)",
                ["model", "params", "MACs", "top-1"], rows)


COMMANDS = [models_cmd, info_cmd, eval_cmd, train_cmd, zoo_eval_cmd]
