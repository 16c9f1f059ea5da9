"""Run a recipe: resume finished stages, run the rest in order, then measure and summarise.

Stage i lives in RUN_DIR/NN-<stage>/ (state.pt + stage.json + whatever the stage writes). Its key hashes
the model, the stage's options and the previous stage's key, so changing a stage redoes it and every
stage after it, while a re-run after a failure picks up from the last finished stage.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from edgevit.errors import StageError, UsageError
from edgevit.pipeline import stages as S
from edgevit.pipeline.recipe import Recipe
from edgevit.pipeline.state import State, digest, load_stage, save_stage

PIPELINE_VERSION = 1
SUMMARY = "summary.json"


def check(recipe: Recipe) -> None:
    """Every cheap check of every stage, before any stage runs."""
    from edgevit.models.registry import load_model
    for i, st in enumerate(recipe.stages):
        try:
            S.ADAPTERS[st.kind][0](st.options, recipe)
        except UsageError as e:
            raise UsageError(f"recipe stages[{i}].{st.kind}: {e}") from None
    load_model(recipe.model, recipe.weights, recipe.trust_checkpoint)   # unknown model / bad weights: exit 2


def stage_dirs(recipe: Recipe, run_dir: Path) -> list[tuple[Path, str]]:
    key = digest({"v": PIPELINE_VERSION, "model": recipe.model, "weights": recipe.weights})
    out = []
    for i, st in enumerate(recipe.stages):
        key = digest({"prev": key, "kind": st.kind, "options": st.options})
        out.append((run_dir / f"{i + 1:02d}-{st.kind}", key))
    return out


def run(recipe: Recipe, run_dir: Path, force: bool = False, console: Console | None = None) -> dict:
    import torch
    from edgevit.models.registry import load_model
    console = console or Console()
    check(recipe)
    run_dir.mkdir(parents=True, exist_ok=True)
    plan = stage_dirs(recipe, run_dir)
    state, timings = None, []
    first = 0
    if not force:   # resume: the last finished stage whose key (and so every key before it) matches
        for i in range(len(plan) - 1, -1, -1):
            loaded = load_stage(*plan[i])
            if loaded is not None:
                state, first = loaded[0], i + 1
                timings = [{"stage": recipe.stages[j].kind, "status": "resumed", "wall_s": None} for j in range(first)]
                break
    if state is None:
        model, meta = load_model(recipe.model, recipe.weights, recipe.trust_checkpoint)
        state = State(model.eval(), meta)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task(f"pipeline {recipe.name}", total=len(plan) + 1, completed=first)
        for i in range(first, len(plan)):
            st, (sdir, key) = recipe.stages[i], plan[i]
            bar.update(task, description=f"stage {i + 1}/{len(plan)}: {st.kind}")
            sdir.mkdir(parents=True, exist_ok=True)
            torch.manual_seed(recipe.seed)
            t0 = time.perf_counter()
            try:
                ctx = S.Context(sdir, recipe.seed, key, progress=True, force=force)
                state = S.ADAPTERS[st.kind][1](state, st.options, ctx)
            except UsageError as e:
                raise UsageError(f"stage {i + 1} ({st.kind}): {e}") from e
            except StageError as e:
                raise StageError(f"stage {i + 1} ({st.kind}) failed: {e}; earlier stages are kept in {run_dir}, "
                                 "re-run to resume") from e
            except Exception as e:  # noqa: BLE001 — one line naming the stage, as for StageError
                first_line = (str(e).strip().splitlines() or [""])[0]
                raise StageError(f"stage {i + 1} ({st.kind}) failed: {type(e).__name__}: {first_line}; earlier stages "
                                 f"are kept in {run_dir}, re-run to resume") from e
            wall = time.perf_counter() - t0
            save_stage(sdir, state, {"key": key, "stage": st.kind, "options": st.options, "wall_s": wall})
            timings.append({"stage": st.kind, "status": "ran", "wall_s": wall})
            bar.advance(task)
        bar.update(task, description="measuring artifacts (top-1, latency p50, interleaved)")
        from edgevit.pipeline.summary import measure
        measured = measure(state, recipe.eval_data, recipe.latency_iters, seed=recipe.seed)
        bar.advance(task)
    summary = {"recipe": recipe.name, "model": recipe.model, "run_dir": str(run_dir), "stages": timings,
               "quantisation": _quant_note(state), "notes": state.notes, **measured,
               "artifacts": [a["path"] for a in state.artifacts]}
    fd, tmp = tempfile.mkstemp(dir=run_dir, suffix=".json.partial")
    with os.fdopen(fd, "w") as f:
        json.dump(summary, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, run_dir / SUMMARY)
    return summary


def _quant_note(state: State) -> dict | None:
    if state.quant is None:
        return None
    q = state.quant
    return {"fmt": q["fmt"], "bits": q["bits"], "method": q.get("method") or "rtn", "calib": q["calib"],
            "seed": q["seed"], "kept_valid_by": "re-applied (same spec + calibration) after each later stage"
            if any("re-applied" in n for n in state.notes) else "no later stage changed the model"}
