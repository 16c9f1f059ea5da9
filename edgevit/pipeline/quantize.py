"""The quantize stage's options → edgevit.ptq: the one call the stage, resume and every re-application use."""
from __future__ import annotations


def quant_recipe(value) -> dict | None:
    """The quantize stage's `recipe` key: an inline mapping, or a YAML file read and checked."""
    if value is None or isinstance(value, dict):
        return value
    from edgevit.ptq import read_recipe
    return read_recipe(value)


def quantize_with(float_model, meta, options: dict, eval_xy=(None, None)):
    """PTQ of `float_model` with the quantize stage's options: (quantised copy, spec, info).

    The single call the quantize stage and every re-application use: `edgevit quantize`'s own `ptq`
    with every recipe key passed through by its parameter name, so the CLI and the pipeline cannot drift.
    """
    from edgevit.ptq import ptq
    from edgevit.pipeline.recipe import stage_keys
    opts = {p.name: options[k] for k, p in stage_keys("quantize").items() if p is not None and k in options}
    opts["recipe"] = quant_recipe(options.get("recipe"))
    qmodel, _, spec, info = ptq(float_model, meta, opts, *eval_xy)
    return qmodel, spec, info
