"""Recipe YAML → validated stage list, before any work.

The keys of a stage are its options as `edgevit.stage_options` declares them — the same declaration the
stage's CLI command is built from — so "every CLI flag of a stage is a recipe key of the same name" holds
by construction, and click's types check recipe values exactly as they check flags.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

import click

from edgevit.errors import UsageError
from edgevit.stage_options import flag_name

STAGES = ("quantize", "rewrite", "split", "stitch", "export")
# Flags the pipeline owns: the model comes from the top of the recipe, outputs go under the run dir,
# and `edgevit pipeline --force` replaces every stage's --force/--overwrite.
TOP_LEVEL = {"model", "weights", "trust-checkpoint"}
OWNED = {"out", "force", "overwrite", "list-passes"}
# Stage flags that share a top-level name but mean something else there: stitch's --weights is one
# state dict per anchor, not the recipe model's weights.
OWN_MEANING = {"stitch": {"weights"}}
# Keys the pipeline adds to a stage (not CLI flags of that stage's command). Stitch: which configuration
# the later stages get — `best` (most accurate), an id, or the best under `edgevit stitch select`'s budgets.
EXTRA = {"stitch": {"config": "best", "max-macs": None, "max-latency-ms": None}, "export": {}}
TOP_KEYS = {"name": str, "model": str, "weights": (str, type(None)), "trust-checkpoint": bool, "seed": int,
            "eval-data": str, "latency-iters": int, "stages": list}
TOP_DEFAULTS = {"name": None, "weights": None, "trust-checkpoint": False, "seed": 0,
                "eval-data": "fashion-mnist:1000", "latency-iters": 100}


@dataclass
class Stage:
    kind: str
    options: dict            # flag name (without --) → converted value, CLI defaults filled in
    given: dict = field(default_factory=dict)   # what the recipe wrote, for the summary


@dataclass
class Recipe:
    name: str
    model: str
    weights: str | None
    trust_checkpoint: bool
    seed: int
    eval_data: str
    latency_iters: int
    stages: list[Stage]
    source: dict


def command_for(kind: str) -> click.Command:
    """A command holding the stage's options: the click context recipe values are converted in."""
    from edgevit.stage_options import stage_command
    return stage_command(kind)


def stage_keys(kind: str) -> dict[str, click.Parameter | None]:
    """Recipe keys of a stage → the click parameter behind each (None: a pipeline-only key)."""
    cmd = command_for(kind)
    skip = (TOP_LEVEL - OWN_MEANING.get(kind, set())) | OWNED | {"help"}
    keys = {flag_name(p): p for p in cmd.params if flag_name(p) not in skip}
    keys.update({k: None for k in EXTRA.get(kind, {})})
    return keys


def _convert(kind: str, index: int, key: str, p: click.Parameter, value):
    where = f"stages[{index}].{kind}.{key}"
    ctx = click.Context(command_for(kind))
    multiple = getattr(p, "multiple", False) or (p.nargs == -1)
    if kind == "export" and key == "runtime":
        multiple = True          # the pipeline exports one artifact per listed runtime
    if kind == "quantize" and key == "recipe" and isinstance(value, dict):
        return value             # an inline quantize recipe instead of a file path
    if multiple:
        values = value if isinstance(value, list) else [value]
    else:
        if isinstance(value, (list, dict)):
            raise UsageError(f"recipe key {where} takes one value, got {type(value).__name__}")
        values = [value]
    out = []
    for v in values:
        if isinstance(v, (list, dict)):
            raise UsageError(f"recipe key {where}: each value must be a scalar, got {type(v).__name__}")
        if getattr(p, "is_flag", False) and not isinstance(v, bool):
            raise UsageError(f"recipe key {where} is a switch: write true or false, not {v!r}")
        try:
            out.append(p.type.convert(v if isinstance(v, bool) else (str(v) if v is not None else v), p, ctx)
                       if v is not None else None)
        except click.BadParameter as e:
            raise UsageError(f"recipe key {where}: {e.message}") from None
    return out if multiple else out[0]


def _default(kind: str, p: click.Parameter):
    from edgevit.stage_options import default_of
    return default_of(p, click.Context(command_for(kind)))


def stage_defaults(kind: str) -> dict:
    """Every recipe key of a stage with the value it has when the recipe leaves it out."""
    return {k: (_default(kind, p) if p is not None else EXTRA[kind][k]) for k, p in stage_keys(kind).items()}


def parse_stage(index: int, entry) -> Stage:
    if not isinstance(entry, dict) or len(entry) != 1:
        raise UsageError(f"recipe stages[{index}] must be a one-key mapping like `- quantize: {{fmt: fp4}}`")
    (kind, opts), = entry.items()
    if kind not in STAGES:
        hint = difflib.get_close_matches(str(kind), STAGES, 1)
        raise UsageError(f"recipe stages[{index}]: unknown stage {kind!r}"
                         + (f" (did you mean {hint[0]!r}?)" if hint else f"; stages are {', '.join(STAGES)}"))
    opts = opts or {}
    if not isinstance(opts, dict):
        raise UsageError(f"recipe stages[{index}].{kind} must be a mapping of options")
    keys = stage_keys(kind)
    options = stage_defaults(kind)
    for k, v in opts.items():
        k = str(k)
        if k in TOP_LEVEL and k not in keys:
            raise UsageError(f"recipe key stages[{index}].{kind}.{k}: set {k} once at the top of the recipe")
        if k in OWNED:
            raise UsageError(f"recipe key stages[{index}].{kind}.{k}: the pipeline owns it (outputs go under "
                             "the run directory; use `edgevit pipeline --force`)")
        if k not in keys:
            hint = difflib.get_close_matches(k, list(keys), 1) or difflib.get_close_matches(k.replace("_", "-"), list(keys), 1)
            raise UsageError(f"recipe key stages[{index}].{kind}.{k} is not an option of `edgevit {kind}`"
                             + (f" (did you mean {hint[0]!r}?)" if hint else f"; keys are {', '.join(sorted(keys))}"))
        options[k] = _convert(kind, index, k, keys[k], v) if keys[k] is not None else v
    return Stage(kind, options, dict(opts))


def load_recipe(path: str | Path) -> Recipe:
    """Parse and fully validate RECIPE.yaml; every error names the key and exits 2."""
    from edgevit.yaml_file import read_yaml
    path = Path(path)
    raw = read_yaml(path, "recipe", "see recipes/ for examples")
    if not isinstance(raw, dict):
        raise UsageError(f"recipe {path} must be a mapping with `model:` and `stages:`")
    for k, v in raw.items():
        if k not in TOP_KEYS:
            hint = difflib.get_close_matches(str(k), list(TOP_KEYS), 1)
            raise UsageError(f"recipe key {k!r} is unknown" + (f" (did you mean {hint[0]!r}?)" if hint else
                             f"; top-level keys are {', '.join(TOP_KEYS)}"))
        if not isinstance(v, TOP_KEYS[k]) or (TOP_KEYS[k] is int and isinstance(v, bool)):
            raise UsageError(f"recipe key {k} must be {getattr(TOP_KEYS[k], '__name__', 'a string or null')}, "
                             f"got {v!r}")
    for k in ("model", "stages"):
        if k not in raw:
            raise UsageError(f"recipe {path} has no `{k}:` key")
    if not raw["stages"]:
        raise UsageError("recipe key stages is empty; list at least one stage (e.g. `- export: {runtime: onnx}`)")
    top = {**TOP_DEFAULTS, **raw}
    if top["latency-iters"] < 1:
        raise UsageError("recipe key latency-iters must be >= 1")
    from edgevit.data import parse_data_spec
    try:
        parse_data_spec(top["eval-data"])
    except UsageError as e:
        raise UsageError(f"recipe key eval-data: {e}") from None
    stages = [parse_stage(i, e) for i, e in enumerate(raw["stages"])]
    check_order(stages)
    return Recipe(top["name"] or path.stem, top["model"], top["weights"], top["trust-checkpoint"], top["seed"],
                  top["eval-data"], top["latency-iters"], stages, raw)


def check_order(stages: list[Stage]) -> None:
    """Orders the stage APIs cannot run, refused up front rather than after an hour of training."""
    kinds = [s.kind for s in stages]
    for i, s in enumerate(stages):
        if s.kind == "quantize" and "quantize" in kinds[:i]:
            raise UsageError(f"recipe stages[{i}]: quantize appears twice; one PTQ spec per pipeline")
        if s.kind in ("split", "stitch") and ({"split", "stitch"} & set(kinds[:i])):
            raise UsageError(f"recipe stages[{i}]: {s.kind} after split/stitch; use one of them per pipeline")
        if s.kind == "split" and "rewrite" in kinds[:i]:
            raise UsageError(f"recipe stages[{i}]: split after rewrite is not supported (edgevit.split prunes "
                             "timm-style ViT blocks, not the rewritten NPU graph); put split before rewrite")
        if s.kind == "stitch" and "rewrite" in kinds[:i]:
            raise UsageError(f"recipe stages[{i}]: stitch after rewrite is not supported; put stitch first")
        if s.kind != "export" and "export" in kinds[:i]:
            raise UsageError(f"recipe stages[{i}]: {s.kind} after export; export must be last")
