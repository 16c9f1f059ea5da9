"""Each stage's options, declared once: the flags of its `edgevit` command and the keys of its recipe stage.

Why one declaration: "every CLI flag of a stage is a recipe key of the same name" stays true by construction
when a stage grows an option, and click's types (Choice, IntRange, Path) check a recipe value exactly as they
check a flag. The commands add what only a terminal needs on top (MODEL, --out, --json, --overwrite).
"""
from __future__ import annotations

import click

from edgevit.artifacts import RUNTIMES
from edgevit.ptq.run import BACKENDS, METHODS


class OneLineBadParameter(click.BadParameter):
    """click's bad-value error printed as edgevit's one line (click's own adds the usage and a hint)."""

    def show(self, file=None) -> None:
        click.secho(f"error: {self.format_message()}", fg="red", err=True)


class Float(click.FloatRange):
    """A range-checked float whose bad values (and non-numbers) fail in one line, as flags and as recipe keys."""

    def fail(self, message, param=None, ctx=None):
        raise OneLineBadParameter(message, ctx=ctx, param=param)


class Int(click.IntRange):
    """A range-checked int that fails in one line, as `Float`."""

    def fail(self, message, param=None, ctx=None):
        raise OneLineBadParameter(message, ctx=ctx, param=param)


def _targets() -> click.Choice:
    from edgevit.rewrite.targets import target_names
    return click.Choice(target_names())


AUTO_HELP = "auto = the model's own data (Fashion-MNIST for the bundled models, the photos for ImageNet ones)."
O = click.Option

QUANTIZE = [
    O(["--fmt", "family"], default="int", show_default=True,
      type=click.Choice(["int", "fp4", "fp6", "fp8", "mxfp4", "mxfp6", "mxfp8", "mxint8"]),
      help="Number format family (fp picks E2M1 weights, A6=E2M3, A8=E3M4 as in FP4DiT)."),
    O(["--bits"], default="w8a8", show_default=True,
      help="Weight/activation bits, e.g. w8a8, w4a6, w4a16; a32: weight-only (float activations) in every family."),
    O(["--method"], default=None, type=click.Choice(METHODS),
      help="Weight rounding: rtn (round-to-nearest), adaround (per layer) or brecq (per block, FP4DiT's "
           "scale-aware rounding on FP grids); knobs under `reconstruction:` in --recipe; gptq with "
           "--backend brevitas. [default: rtn]"),
    O(["--backend"], default="edgevit", show_default=True, type=click.Choice(BACKENDS),
      help="Quantiser: edgevit's own, or brevitas' PTQ (pip install edgevit[brevitas]) into the same checkpoint."),
    O(["--calib"], default="auto:256", show_default=True,
      help="Calibration data: auto[:N], fashion-mnist:N (train split), folder:PATH[:N] or photos[:N]; "
           f"append +mirror to add each image's mirror image. {AUTO_HELP}"),
    O(["--recipe"], type=click.Path(dir_okay=False), default=None,
      help="YAML with overrides (weight_format, group_size, act_granularity, softmax_bits, layers: {pattern: ...})."),
    O(["--keep-float"], multiple=True, help="Layer-name pattern to leave in float (repeatable), e.g. head."),
    O(["--eval-data"], default="auto", show_default=True,
      help="Evaluation data: auto, fashion-mnist[:N] (test set), photos[:N] or folder:PATH (agreement with "
           f"float if unlabelled). {AUTO_HELP}"),
    O(["--eval-limit"], type=click.IntRange(1), default=None, help="Evaluate on a seeded subset of N images."),
    O(["--fold-bn/--no-fold-bn"], default=None, help="Fold BatchNorm into convs first [default: on for models with BN]."),
    O(["--equalize/--no-equalize"], default=None,
      help="Cross-layer equalisation of layer pairs and residual streams + high-bias absorption "
           "[default: with --fold-bn]."),
    O(["--bias-correction/--no-bias-correction"], default=None,
      help="Empirical bias correction after rounding [default: on for models with BN, with --method rtn]."),
    O(["--bn-reestimate/--no-bn-reestimate"], default=None,
      help="Re-estimate BN statistics after quantisation (with --no-fold-bn; helps W4, hurts W8) [default: off]."),
    O(["--candidates"], default=None, help="--bits auto: per-layer choices, FAMILY:wNaM or float "
      "[default: int:w8a8,int:w6a8,int:w4a8,int:w3a8,int:w2a8]."),
    O(["--max-size"], default=None, help="--bits auto: model size budget, e.g. 1.2MB."),
    O(["--max-latency-ms"], type=float, default=None, help="--bits auto: latency budget (NPU roofline cost model)."),
    O(["--max-drop"], type=float, default=None, help="--bits auto: smallest model losing at most this many top-1 points."),
    O(["--sensitivity"], default="full", show_default=True, type=click.Choice(["scaled", "full"]),
      help="--bits auto: measure every (layer, candidate) (full) or one per layer scaled by local noise."),
    O(["--workers"], type=click.IntRange(1), default=None,
      help="--bits auto --sensitivity full: measure the candidates as N Ray tasks (1 torch thread each; "
           "pip install 'edgevit[ray]'). Same choice as the serial run at 1 thread."),
    O(["--address"], default=None, metavar="auto|HOST:PORT",
      help="With --workers: a running Ray cluster instead of a local Ray instance."),
    O(["--seed"], default=0, show_default=True, help="Seed for calibration and evaluation sampling."),
]

REWRITE = [
    O(["--target", "target_name"], type=_targets(), default="qnn-htp", show_default=True),
    O(["--disable"], multiple=True, metavar="PASS", help="Switch a pass off (repeatable)."),
    O(["--gelu"], type=click.Choice(["op", "tanh", "sigmoid", "keep"]), default=None,
      help="GELU form; default: the target's. tanh/sigmoid change outputs (accuracy change reported)."),
    O(["--data"], default="auto:256", show_default=True,
      help=f"Real inputs for equivalence and reports (test split for checks, train split for calibration). {AUTO_HELP}"),
    O(["--report/--no-report"], default=True, show_default=True, help="W8A16/W8A8/W4A16 robustness report."),
    O(["--seed"], default=0, show_default=True, help="Seed for data sampling."),
    O(["--distill"], type=click.Choice(["conv"]), default=None,
      help="Replace the ViT by a distilled depthwise-separable conv student (AutoNeural's encoder swap)."),
    O(["--epochs"], type=click.IntRange(1, 200), default=None, help="Distillation epochs (default 4)."),
    O(["--train-data"], default="auto", show_default=True, help=f"Labelled training set for --distill. {AUTO_HELP}"),
    O(["--work-dir"], type=click.Path(file_okay=False), default=None,
      help="Teacher targets and resumable checkpoints for --distill (default: OUT.work)."),
    O(["--keep-work"], is_flag=True, help="Keep --work-dir after a successful --distill run."),
]

DEVICES_HELP = ("A device count (identical devices) or a YAML file: devices: [{name, memory_mb, compute, "
                "runtime}, ...]; compute is relative to this host.")

SPLIT = [
    O(["--devices", "devices_spec"], required=True, help=DEVICES_HELP),
    O(["--keep"], type=float, default=0.2, show_default=True,
      help="Largest sub-model's share of the original's parameters (the fastest device's budget)."),
    O(["--latency"], type=float, default=0.3, show_default=True,
      help="Fastest device's sub-model batch-1 cost as a share of the original's (kernel launches + MACs; "
           "whole attention/MLP branches are pruned to meet it)."),
    O(["--bits"], default=None, help="Quantise every sub-model after distillation, e.g. w8a8 (quant/ spec)."),
    O(["--fmt"], default="int", show_default=True, help="Number format family for --bits: int, fp4, fp6, fp8, mx..."),
    O(["--quantize-fusion"], is_flag=True, help="With --bits, quantise the fusion head too."),
    O(["--data"], default="auto", show_default=True,
      help=f"Labelled training images (train split) for importance, distillation and fusion. {AUTO_HELP}"),
    O(["--eval-data"], default="auto", show_default=True,
      help="Labelled images (test split) for the accuracy in the report."),
    O(["--train-images"], type=click.IntRange(16), default=12000, show_default=True),
    O(["--fusion-images"], type=click.IntRange(16), default=2000, show_default=True),
    O(["--epochs"], type=click.IntRange(1), default=4, show_default=True, help="Distillation epochs per sub-model."),
    O(["--batch-size"], type=click.IntRange(1), default=128, show_default=True),
    O(["--lr"], type=float, default=1e-3, show_default=True),
    O(["--seed"], type=int, default=0, show_default=True),
    O(["--work-dir"], type=click.Path(file_okay=False), default=None,
      help="Checkpoints for resuming distillation (default .edgevit-split/MODEL-seedN)."),
    O(["--latency-rounds"], type=click.IntRange(5), default=100, show_default=True),
]

STITCH = [
    O(["--anchors"], default=None, help="Comma-separated anchors of equal depth, e.g. vit-tiny,vit-small,vit-base "
      "(bundled names or timm:<arch> with --weights)."),
    O(["--weights"], default=None, help="Comma-separated state dicts, one per anchor (for timm/user anchors)."),
    O(["--epochs"], type=Int(0), default=3, show_default=True,
      help="Joint training epochs (0, with --warmup-epochs 0: LS init only)."),
    O(["--kernel"], type=Int(1), default=2, show_default=True, help="Paired-stitching window (blocks)."),
    O(["--stride"], type=Int(1), default=1, show_default=True, help="Paired-stitching stride."),
    O(["--two-way"], is_flag=True, help="SN-Netv2 two-way stitching (large→small, s→l→s, l→s→l)."),
    O(["--direction"], type=click.Choice(["up", "down"]), default="down", show_default=True,
      help="One-stitch routes large→small (down: the large anchor's front, the small one's tail, the routes "
           "that fill the frontier) or small→large (up, SN-Net v1; same count). Ignored with --two-way."),
    O(["--round-trip"], is_flag=True,
      help="Add the two-stitch routes that return to the front anchor (large→small→large with --direction "
           "down: the large anchor's head, a middle run of the small one's blocks). Part of --two-way."),
    O(["--lora-rank"], type=Int(0), default=0, show_default=True,
      help="SN-Netv2 LoRA stitching layers of this rank (0: full)."),
    O(["--sampling"], type=click.Choice(["uniform", "flops", "log-flops"]), default="log-flops", show_default=True,
      help="Config sampling per step: uniform (v1), FLOPs-grouped (v2), or v2 with buckets of equal MACs "
           "ratio (log-flops: every anchor pair of a geometric family gets the same share)."),
    O(["--distill"], type=Float(0, 1), default=1.0, show_default=True,
      help="Weight of distillation on stitched steps from a frozen original anchor (0: off)."),
    O(["--distill-teacher"], type=click.Choice(["largest", "route"]), default="largest", show_default=True,
      help="Teacher of --distill: the largest anchor (SN-Net), or the largest anchor the route runs "
           "(cheaper for small routes)."),
    O(["--lr"], type=Float(0, min_open=True), default=2e-3, show_default=True,
      help="Learning rate of the stitching layers (the anchors get lr × --anchor-lr-scale)."),
    O(["--warmup-epochs"], type=Int(0), default=1, show_default=True,
      help="Stitch-only epochs before the joint ones: anchors frozen, stitched configurations only."),
    O(["--anchor-lr-scale"], type=Float(0), default=0.1, show_default=True,
      help="Anchors' learning rate as a fraction of --lr in the joint phase (0: anchors stay frozen)."),
    O(["--anchor-distill"], type=Float(0, 1), default=1.0, show_default=True,
      help="On an anchor's steps, weight of distillation from that anchor's original logits (0: off)."),
    O(["--anchor-prob"], type=Float(0, 1), default=0.25, show_default=True,
      help="Share of joint steps that train an anchor (0: the sampler's own share, 3 in 71 for 3 ViTs)."),
    O(["--batch-size"], type=Int(1), default=128, show_default=True),
    O(["--train-data"], default="fashion-mnist:20000", show_default=True, help="Training subset (train split)."),
    O(["--eval-data"], default="fashion-mnist", show_default=True, help="Labelled data for every config's top-1."),
    O(["--calib-images"], type=Int(1), default=100, show_default=True, help="Images for the LS init."),
    O(["--keep-graphs"], type=click.Choice(["frontier", "all"]), default="frontier", show_default=True,
      help="ONNX graphs kept in the artifact: the anchors + the MACs/accuracy Pareto front, or all "
           "(every config is exported, checked and timed either way)."),
    O(["--latency-iters"], type=Int(1), default=50, show_default=True),
    O(["--work-dir"], type=click.Path(file_okay=False), default=None, help="Resume folder (default next to --out)."),
    O(["--device"], default="auto", show_default=True,
      help="Training device: auto (cuda if available, else cpu), cpu or cuda[:N]; evaluation stays on the CPU."),
    O(["--seed"], type=int, default=0, show_default=True),
]

EXPORT = [
    O(["--runtime"], type=click.Choice(RUNTIMES), default="onnx", show_default=True),
    O(["--parity-data"], default="auto:512", show_default=True,
      help="Real test images for the export-time parity check (auto[:N], fashion-mnist:N, photos[:N] or "
           f"folder:PATH[:N]); {AUTO_HELP}"),
    O(["--seed"], default=0, show_default=True, help="Seed for the parity subset."),
    O(["--opset"], type=click.IntRange(17, 23), default=None, help="ONNX opset (default 17 for FP32, 21 for quantised graphs)."),
    O(["--static-batch"], is_flag=True, help="Fix the batch at 1 (NPUs want fully static shapes)."),
    O(["--graph-form"], type=click.Choice(["exact", "integer", "float-matmul"]), default="exact", show_default=True,
      help="Quantised graphs: 'exact' rounds only where the torch model does (FP4 W4A6 linears on int8 kernels "
           "where that is exact); 'float-matmul' the same rounding with float matmuls only; 'integer' (w8a8 CNNs) "
           "also requantises conv outputs and residual adds so onnxruntime runs integer kernels end to end."),
    O(["--calib-data"], default="auto:256", show_default=True,
      help="Training images calibrating the integer form's requantisation scales."),
    O(["--precision"], type=click.Choice(["fp32", "w8a8", "w8a16", "w4a16"]), default=None,
      help="TFLite (fp32|w8a8|w8a16, via ai-edge-quantizer) and QNN (w8a16 default|w8a8|w4a16) precision "
           "for float models, calibrated on --calib-data. ONNX precision comes from `edgevit quantize`."),
    O(["--soc"], multiple=True, default=("SM8650",), show_default=True,
      help="QNN only: Snapdragon SoC(s) to compile a context binary for (repeat for several)."),
    O(["--parity-images"], default=16, show_default=True, type=click.IntRange(1),
      help="QNN only: images run on the (slow) HTP emulator for the parity check."),
    O(["--weight-scales"], type=click.Choice(["minmax", "model"]), default="minmax", show_default=True,
      help="TFLite integer export: 'model' keeps edgevit's own int8 weights and scales."),
]

STAGES: dict[str, list[click.Parameter]] = {"quantize": QUANTIZE, "rewrite": REWRITE, "split": SPLIT,
                                            "stitch": STITCH, "export": EXPORT}


def stage_options(kind: str):
    """Decorator: add stage `kind`'s options to a click command, before its own --out (if any)."""
    def decorate(cmd: click.Command) -> click.Command:
        names = [p.name for p in cmd.params]
        at = names.index("out") if "out" in names else len(names)
        cmd.params[at:at] = STAGES[kind]
        return cmd
    return decorate


def stage_command(kind: str) -> click.Command:
    """A bare command holding only the stage's options: the click context recipe values are converted in."""
    return click.Command(kind, params=STAGES[kind])


def flag_name(p: click.Parameter) -> str:
    """The recipe key of a parameter: its first long flag without dashes (`--two-way` → `two-way`)."""
    if isinstance(p, click.Argument):
        return p.name.replace("_", "-")
    longs = [o for o in p.opts if o.startswith("--")]
    return (longs[0] if longs else p.opts[0]).lstrip("-")


def default_of(p: click.Parameter, ctx: click.Context):
    """A parameter's default as the CLI sees it (click ≥ 8.2 marks "no default" with a sentinel)."""
    multiple = getattr(p, "multiple", False) or p.nargs == -1
    d = p.get_default(ctx, call=True)
    if type(d).__name__ == "Sentinel":
        d = [] if multiple else (False if getattr(p, "is_flag", False) else None)
    elif d is None and multiple:
        d = []
    return list(d) if multiple else d


def with_defaults(kind: str, given: dict) -> dict:
    """Stage `kind`'s options keyed by recipe key (`two-way`), the CLI's defaults filled in and `given` (by
    Python name `two_way` or recipe key) converted and checked by the flag's own click type — so the Python
    API takes exactly the CLI's options and defaults. A bad value or an unknown name is a one-line UsageError."""
    import difflib

    from edgevit.errors import UsageError
    ctx = click.Context(stage_command(kind))
    params = {flag_name(p): p for p in STAGES[kind]}
    by_python = {p.name: k for k, p in params.items()}
    out = {k: default_of(p, ctx) for k, p in params.items()}
    for name, value in given.items():
        key = by_python.get(name, name if name in params else None)
        if key is None:
            hint = difflib.get_close_matches(name, [*by_python, *params], 1)
            raise UsageError(f"{kind} has no option {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else
                             f"; options are {', '.join(sorted(by_python))}"))
        try:
            out[key] = params[key].type_cast_value(ctx, value) if value is not None else None
        except click.BadParameter as e:
            raise UsageError(f"{kind} option {name}: {e.message}") from None
    return out
