"""`edgevit pipeline RECIPE.yaml`: model → quantize → rewrite → split | stitch → export, resumable.

    from edgevit.pipeline import load_recipe, run
    summary = run(load_recipe("recipes/demo.yaml"), Path("runs/demo"))

recipe (YAML keys = CLI flags), stages (one adapter per stage API), state (what flows between stages and
the resumable per-stage outputs), summary (artifacts measured here), run (the orchestration).
"""
from edgevit.pipeline.recipe import Recipe, load_recipe
from edgevit.pipeline.run import run

__all__ = ["Recipe", "load_recipe", "run"]
