"""A stitch job's options checked up front, the same for `edgevit stitch` and the pipeline's stitch stage:
anchors that load and can be stitched, the training recipe, the device."""
from __future__ import annotations

from edgevit.errors import UsageError


def check_job(anchors: str, weights: str | None, train_data: str, eval_data: str) -> tuple[list[str], list | None, int]:
    """(anchor names, per-anchor weights, depth) once the anchors load and can be stitched; else UsageError.
    Shared by `edgevit stitch` and the pipeline's stitch stage, so both refuse the same inputs up front."""
    from edgevit.data import parse_data_spec
    from edgevit.stitch.anchors import AnchorError, check_anchors
    from edgevit.stitch.pipeline import load_anchors
    names = [a.strip() for a in str(anchors).split(",") if a.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise UsageError("--anchors needs at least two different models, e.g. vit-tiny,vit-small")
    wlist = [w.strip() or None for w in weights.split(",")] if weights else None
    if wlist is not None and len(wlist) != len(names):
        raise UsageError(f"--weights lists {len(wlist)} files for {len(names)} anchors; give one per anchor")
    parse_data_spec(train_data), parse_data_spec(eval_data)
    modules, metas = load_anchors(names, wlist)
    try:
        check_anchors(modules, metas[0].input_shape)
    except AnchorError as e:
        raise UsageError(str(e)) from e
    return names, wlist, len(modules[0].blocks)


def recipe_from_options(options: dict):
    """The training recipe from `edgevit stitch`'s options (recipe-key spelling: `anchor-lr-scale`),
    or a one-line UsageError naming the flag; shared by the CLI and the pipeline's stitch stage."""
    from edgevit.stitch.train import RecipeError, StitchRecipe
    keys = ("epochs", "batch-size", "lr", "sampling", "distill", "seed", "warmup-epochs", "anchor-lr-scale",
            "anchor-distill", "anchor-prob", "distill-teacher")
    try:
        return StitchRecipe(**{k.replace("-", "_"): options[k] for k in keys if k in options})
    except RecipeError as e:
        raise UsageError(f"--{e}") from None


def check_device(name: str) -> str:
    """`--device` resolved (auto → cuda or cpu) or a one-line UsageError."""
    from edgevit.stitch.train import DeviceError, resolve_device
    try:
        return resolve_device(name)
    except DeviceError as e:
        raise UsageError(f"--{e}") from e



def make_job(options: dict, out, work_dir=None):
    """A checked `StitchJob` from `edgevit stitch`'s options (recipe-key spelling, CLI defaults filled in, e.g.
    by `edgevit.stage_options.with_defaults`); the CLI, the pipeline and `edgevit.stitch_models` build it here."""
    from pathlib import Path

    from edgevit.stitch.pipeline import StitchJob
    if not options.get("anchors"):
        raise UsageError("give --anchors a,b[,c], e.g. --anchors vit-tiny,vit-small,vit-base")
    recipe = recipe_from_options(options)
    if options.get("two-way") and options.get("round-trip"):
        raise UsageError("--round-trip is part of --two-way (which has both directions' two-stitch routes); give one")
    names, wlist, _ = check_job(options["anchors"], options.get("weights"), options["train-data"], options["eval-data"])
    device = check_device(options["device"])
    return StitchJob(names, Path(out), recipe, options["kernel"], options["stride"], options["two-way"],
                     options["lora-rank"], options["train-data"], options["eval-data"], options["calib-images"],
                     Path(work_dir) if work_dir else None, options["latency-iters"], wlist, device,
                     options.get("direction", "down"), options.get("round-trip", False))
