"""Precision specs: `--fmt fp4 --bits w4a6` plus recipe options → per-tensor quantiser configs.

Defaults (all overridable in the recipe):
- weights: int → intN per output channel; fp4 → E2M1 in groups of 128 (FP4DiT); fp6 → E2M3 and
  fp8 → E4M3FN per channel; mx* → 32-element blocks.
- activations: int → uintN with a zero point, static per tensor; fp* → A4=E2M1, A6=E2M3,
  A8=E3M4, dynamic per token (FP4DiT's online quantisation); mx* → MX blocks of 32. For fp* and mx*,
  A16 means weight-only (activations stay float, as W4A16 means on every runtime: a device with 16-bit
  floats runs them natively); per-token E5M10 rounding emulated that in the graph at ~9 ops per layer
  for no accuracy (benchmarks/onnx_speed.py). `act_format: e5m10` in a recipe still asks for it.
  A32 means weight-only in every family: INT A16 is 16-bit integer activations (the HTP format), so INT
  weight compression (NNCF's and onnxruntime's INT4 weight-only) is spelled w4a32.
- observers (the rule): min-max everywhere (FP4DiT derives FP scales from the max, MX from the
  block max) except where clipping pays — INT weights of ≤4 bits and static activations below
  8 bits use the MSE clipping search. At 8 bits min-max stays: with the exact (histogram) MSE search,
  MobileNetV2 W8A8 (fold + CLE + bias correction) loses against min-max (logit SQNR 18.6 vs 21.2 dB at
  equal agreement, 96.8 %; 18.1 vs 19.5 dB before residual streams were equalised) and the Fashion-MNIST
  zoo is equal within 0.2 dB either way.
- the softmax output stays float (FP4DiT keeps it at 16 bit) unless `softmax_bits` is set.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import asdict, dataclass, field, replace

from quant.errors import SpecError
from quant.formats import FpFormat, IntFormat, MxFormat, parse_format

FAMILIES = ("int", "fp4", "fp6", "fp8", "mxfp4", "mxfp6", "mxfp8", "mxint8")
FAMILY_WEIGHT_BITS = {"fp4": 4, "fp6": 6, "fp8": 8, "mxfp4": 4, "mxfp6": 6, "mxfp8": 8, "mxint8": 8}
FP_WEIGHT = {4: "e2m1", 6: "e2m3", 8: "e4m3fn"}
FP_ACT = {4: "e2m1", 6: "e2m3", 8: "e3m4", 16: "e5m10"}   # 16: softmax_bits only; A16 = float
MX_ACT = {4: "mxfp4", 6: "mxfp6", 8: "mxfp8"}
WEIGHT_GRANULARITIES = ("tensor", "channel", "group", "block")
ACT_GRANULARITIES = ("tensor", "token", "block")
OBSERVERS = ("minmax", "percentile", "mse")
RECIPE_KEYS = {"weight_format", "act_format", "weight_granularity", "group_size", "weight_observer",
               "act_granularity", "act_observer", "percentile", "softmax_bits", "attention_matmuls",
               "quantize_norm_inputs", "quantize_gelu_inputs", "keep_float", "layers", "fmt", "bits"}
# whole-model method knobs, read by their own modules (quant.reconstruct.ReconConfig): never per layer
RECIPE_KEYS |= {"method", "reconstruction"}
LAYER_KEYS = RECIPE_KEYS - {"keep_float", "layers", "attention_matmuls", "quantize_norm_inputs",
                            "quantize_gelu_inputs", "method", "reconstruction"}


@dataclass(frozen=True)
class QConfig:
    """How one tensor is quantised; `fmt` is a format name (see quant.formats.parse_format).

    granularity — weights: tensor | channel | group | block (MX); activations: tensor (static,
    calibrated) | token (dynamic, one scale per token/row along the feature axis) | block (MX).
    """
    fmt: str
    granularity: str
    group_size: int = 0
    observer: str = "minmax"
    percentile: float = 99.99

    @property
    def format(self) -> IntFormat | FpFormat | MxFormat:
        return parse_format(self.fmt)

    @property
    def dynamic(self) -> bool:
        return self.granularity in ("token", "block")

    @property
    def bits(self) -> int:
        return self.format.code_bits

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "QConfig | None":
        return None if d is None else cls(**d)


@dataclass(frozen=True)
class LayerConfig:
    weight: QConfig | None
    act: QConfig | None
    softmax: QConfig | None = None


@dataclass(frozen=True)
class QuantSpec:
    """The whole model's spec: defaults, per-layer overrides (pattern → LayerConfig, the last
    matching pattern wins), keep-float patterns and which non-GEMM inputs get quantised."""
    family: str
    bits: str
    default: LayerConfig
    overrides: tuple[tuple[str, LayerConfig], ...] = ()
    keep_float: tuple[str, ...] = ()
    attention_matmuls: bool = True
    quantize_norm_inputs: bool = False
    quantize_gelu_inputs: bool = False
    recipe: dict = field(default_factory=dict, compare=False)

    @property
    def patterns(self) -> list[str]:
        return [*self.keep_float, *(p for p, _ in self.overrides)]

    def layer_config(self, name: str) -> LayerConfig | None:
        """The config for module `name`, or None when it stays float."""
        if any(matches(p, name) for p in self.keep_float):
            return None
        cfg = self.default
        for pattern, override in self.overrides:
            if matches(pattern, name):
                cfg = override
        return cfg

    def to_dict(self) -> dict:
        return {"family": self.family, "bits": self.bits, "recipe": self.recipe, "keep_float": list(self.keep_float)}

    @classmethod
    def from_dict(cls, d: dict) -> "QuantSpec":
        return parse_spec(d["family"], d["bits"], d.get("recipe") or None, d.get("keep_float", ()))


def matches(pattern: str, name: str) -> bool:
    """fnmatch on the module name; a pattern also covers everything below it (`blocks.0`)."""
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern + ".*")


def parse_bits(bits: str) -> tuple[int, int]:
    m = re.fullmatch(r"w(\d+)a(\d+)", bits.strip().lower())
    if not m:
        raise SpecError(f"bad precision {bits!r}; write wNaM, e.g. w8a8, w4a6, w4a16")
    return int(m.group(1)), int(m.group(2))


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise SpecError(f"unknown --fmt {family!r}; choose one of {', '.join(FAMILIES)}")


def _layer_config(family: str, bits: str, opts: dict) -> LayerConfig:
    _check_family(family)
    wb, ab = parse_bits(bits)
    if family == "int":
        if not 2 <= wb <= 8:
            raise SpecError(f"{bits}: integer weights need 2-8 bits, not {wb}")
        if not (2 <= ab <= 8 or ab in (16, 32)):
            raise SpecError(f"{bits}: integer activations need 2-8 or 16 bits, or 32 (float: weight-only), not {ab}")
        wfmt, afmt = f"int{wb}", (None if ab == 32 else f"uint{ab}")
        wgran, agran, gs = "channel", "tensor", 0
        wobs, aobs = ("mse" if wb <= 4 else "minmax"), ("mse" if ab < 8 else "minmax")
    else:
        want = FAMILY_WEIGHT_BITS[family]
        if wb != want:
            raise SpecError(f"--fmt {family} stores {want}-bit weights, not {wb}; use --bits w{want}a{ab} "
                            f"or a --fmt with {wb}-bit weights (int, fp{wb})")
        wobs, aobs = "minmax", "minmax"
        if family.startswith("mx"):
            wfmt, wgran, gs = family, "block", 32
            if ab in (16, 32):
                afmt, agran = None, "token"         # weight-only
            elif family == "mxint8" and ab == 8:
                afmt, agran = "mxint8", "block"
            elif ab in MX_ACT and family != "mxint8":
                afmt, agran = MX_ACT[ab], "block"
            else:
                raise SpecError(f"{bits}: --fmt {family} activations need "
                                f"{'8 or 16' if family == 'mxint8' else '4, 6, 8 or 16'} bits, not {ab}")
        else:
            if ab not in FP_ACT and ab != 32:
                raise SpecError(f"{bits}: FP activations need 4, 6, 8 or 16 bits (E2M1/E2M3/E3M4/E5M10), "
                                f"or 32 (weight-only), not {ab}")
            wfmt, afmt = FP_WEIGHT[wb], (None if ab in (16, 32) else FP_ACT[ab])   # A16, A32: weight-only
            wgran, agran, gs = ("group", "token", 128) if wb == 4 else ("channel", "token", 0)
    if "weight_format" in opts:
        wfmt = opts["weight_format"]
        if isinstance(parse_format(wfmt), MxFormat):
            wgran, gs = "block", parse_format(wfmt).block
    if "act_format" in opts:
        afmt = opts["act_format"]
        if isinstance(parse_format(afmt), MxFormat):
            agran = "block"
    wgran = opts.get("weight_granularity", wgran)
    gs = int(opts.get("group_size", gs if wgran in ("group", "block") else 0) or (128 if wgran == "group" else 0))
    agran = opts.get("act_granularity", agran)
    pct = float(opts.get("percentile", 99.99))
    weight = _check(QConfig(wfmt, wgran, gs, opts.get("weight_observer", wobs), pct), "weight")
    afmt_obj = parse_format(afmt) if afmt is not None else None
    act = None if afmt is None else _check(QConfig(afmt, agran, afmt_obj.block if isinstance(afmt_obj, MxFormat) else 0,
                                                   opts.get("act_observer", aobs), pct), "act")
    softmax = None
    if opts.get("softmax_bits") is not None:
        sb = int(opts["softmax_bits"])
        if family == "int" or (act is not None and isinstance(act.format, IntFormat)):
            if not (2 <= sb <= 8 or sb == 16):
                raise SpecError(f"softmax_bits {sb}: integer softmax outputs need 2-8 or 16 bits")
            softmax = QConfig(f"uint{sb}", "tensor", 0, "minmax", pct)
        elif sb in FP_ACT:
            softmax = QConfig(FP_ACT[sb], "token", 0, "minmax", pct)
        else:
            raise SpecError(f"softmax_bits {sb}: FP softmax outputs need 4, 6, 8 or 16 bits")
    return LayerConfig(weight, act, softmax)


def _check(cfg: QConfig, role: str) -> QConfig:
    fmt = cfg.format
    grans = WEIGHT_GRANULARITIES if role == "weight" else ACT_GRANULARITIES
    if cfg.granularity not in grans:
        raise SpecError(f"{role} granularity {cfg.granularity!r} is not one of {', '.join(grans)}")
    if (cfg.granularity == "block") != isinstance(fmt, MxFormat):
        raise SpecError(f"{role} format {cfg.fmt} needs granularity "
                        f"{'block' if isinstance(fmt, MxFormat) else 'other than block'}")
    if cfg.observer not in OBSERVERS:
        raise SpecError(f"{role} observer {cfg.observer!r} is not one of {', '.join(OBSERVERS)}")
    if cfg.granularity == "group" and cfg.group_size < 1:
        raise SpecError(f"{role} group size must be a positive integer, not {cfg.group_size}")
    if not 50.0 < cfg.percentile <= 100.0:
        raise SpecError(f"percentile {cfg.percentile} must be in (50, 100]")
    if role == "weight":
        if isinstance(fmt, IntFormat) and (not fmt.signed or fmt.bits > 8):
            raise SpecError(f"weights use signed int2-int8, not {cfg.fmt}")
        if fmt.code_bits > 8:
            raise SpecError(f"weight format {cfg.fmt} has {fmt.code_bits} bits; weights are stored in at most 8")
    return cfg


def parse_spec(family: str, bits: str, recipe: dict | None = None, keep_float=()) -> QuantSpec:
    """Build and validate a spec; every impossible combination raises SpecError with the reason."""
    recipe = dict(recipe or {})
    unknown = set(recipe) - RECIPE_KEYS
    if unknown:
        raise SpecError(f"unknown recipe key(s) {sorted(unknown)}; allowed: {', '.join(sorted(RECIPE_KEYS))}")
    family = str(recipe.get("fmt", family)).lower()
    bits = str(recipe.get("bits", bits)).lower()
    default = _layer_config(family, bits, recipe)
    overrides = []
    layers = recipe.get("layers") or {}
    if not isinstance(layers, dict):
        raise SpecError("recipe 'layers' must map a layer-name pattern to options or 'float'")
    floats = [str(p) for p in (*(recipe.get("keep_float") or ()), *keep_float)]
    for pattern, opts in layers.items():
        if opts in ("float", None, False):
            floats.append(str(pattern))
            continue
        if not isinstance(opts, dict) or set(opts) - LAYER_KEYS:
            raise SpecError(f"recipe layer {pattern!r}: options must be a mapping with keys from "
                            f"{', '.join(sorted(LAYER_KEYS))} (or 'float')")
        merged = {k: v for k, v in recipe.items() if k in LAYER_KEYS} | opts
        overrides.append((str(pattern), _layer_config(str(merged.get("fmt", family)).lower(),
                                                       str(merged.get("bits", bits)).lower(), merged)))
    return QuantSpec(family, bits, default, tuple(overrides), tuple(dict.fromkeys(floats)),
                     bool(recipe.get("attention_matmuls", True)), bool(recipe.get("quantize_norm_inputs", False)),
                     bool(recipe.get("quantize_gelu_inputs", False)), recipe)


def with_keep_float(spec: QuantSpec, patterns) -> QuantSpec:
    return replace(spec, keep_float=tuple(dict.fromkeys([*spec.keep_float, *patterns])))
