"""quant: post-training quantisation of PyTorch vision models to INT, FP (ExMy) and MX formats.

Imports only torch and numpy (DESIGN.md), so it can be lifted out alone.

One call::

    spec = quant.parse_spec("fp4", "w4a6", recipe=None, keep_float=["head"])
    qmodel = quant.quantize_model(model, spec, calib)          # a copy; `model` is untouched
    quant.save_quantized(qmodel, "out/q", model_info={...})     # packed codes + scales + quant.json
    qmodel2 = quant.load_quantized("out/q", float_model)        # computes exactly what qmodel did

API for the stages built on top (read these, don't re-derive):

- Formats (`quant.formats`): `IntFormat(bits, signed)`, `FpFormat(exp_bits, man_bits, special, bias)`,
  `MxFormat(element, block)`, `parse_format("e2m1" | "int8" | "mxfp4" | ...)`. Grid methods work in
  grid units: `round` (RNE, saturating), `floor`, `step(x)` (FP: local step s(x) = 2^(max(⌊log2|x|⌋,
  emin)−m), INT: 1), `encode`/`decode` (bit patterns), `grid()`, `max`, `code_bits`.
- Quantised modules (`quant.modules`), each with `quant_kind`:
  QuantLinear / QuantConv2d (depthwise too) carry `weight_quant` and `input_quant`; quantised
  attention (any module with `attend(q, k)`/`aggregate(attn, v)`, e.g. the bundled ViT's) carries
  `q_quant`, `k_quant`, `v_quant` and `softmax_quant` (None = softmax output kept float); LayerNorm /
  GELU carry `input_quant` when the spec quantises their inputs. `quantized_layers(model)` lists them.
- `WeightQuantizer` (exporters read it): `config` (QConfig: fmt name, granularity tensor|channel|
  group|block, group_size, observer), `fmt`, `grid_fmt` (the MX element format), `group_size`
  (effective), `scale` (rows, groups) buffer — scale[r, g] covers columns g·gs…(g+1)·gs of the weight
  viewed as (out_channels, rest) — `scale_dtype`, `codes(w)`, `quantize(w)` (fake-quant),
  `dequantize(codes)`, `describe()`. Adaptive rounding: `fit(w)` computes the scales; set
  `rounding = f(x_grid_units, grid_fmt) -> grid values` to replace round-to-nearest (x has shape
  (rows, groups, group_size)); codes() and the checkpoint then carry the learned rounding.
- `ActQuantizer` (exporters read it): `config`, `fmt`, `axis` (feature axis: -1 for tokens, 1 for
  NCHW conv inputs), granularity "tensor" (static: `scale`, `zero_point` buffers; zero point only for
  unsigned INT), "token" (dynamic per token/row along `axis`) or "block" (MX along `axis`);
  `describe()`. Fake-quant passes gradients straight through.
- Spec (`quant.spec`): `parse_spec(family, bits, recipe, keep_float)` → QuantSpec; the defaults and
  the observer rule are in quant.spec's docstring. `plan_model(model, spec)` validates and returns
  {layer name: LayerPlan(kind, LayerConfig(weight, act, softmax))}; quantised models keep it as
  `model.quant_plan` (and the spec as `model.quant_spec`).
- Errors: `SpecError` (a ValueError) for every bad spec, pattern, format or checkpoint.
"""
from quant.analysis import layer_sqnr, sqnr_db
from quant.checkpoint import check_out_dir, load_quantized, read_config, save_quantized, write_quantized
from quant.errors import SpecError
from quant.formats import FpFormat, IntFormat, MxFormat, parse_format
from quant.modules import QuantConv2d, QuantLinear, quantized_layers
from quant.ptq import LayerPlan, calibrate, plan_model, quantize_model
from quant.quantizers import ActQuantizer, WeightQuantizer
from quant.spec import LayerConfig, QConfig, QuantSpec, parse_bits, parse_spec

__all__ = ["ActQuantizer", "FpFormat", "IntFormat", "LayerConfig", "LayerPlan", "MxFormat", "QConfig",
           "QuantConv2d", "QuantLinear", "QuantSpec", "SpecError", "WeightQuantizer", "calibrate",
           "check_out_dir", "layer_sqnr", "load_quantized", "parse_bits", "parse_format", "parse_spec",
           "plan_model", "quantize_model", "quantized_layers", "read_config", "save_quantized", "sqnr_db",
           "write_quantized"]
