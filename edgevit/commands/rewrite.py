"""NPU rewrite commands: `rewrite` (equivalence-checked passes + robustness report) and `check`."""
from __future__ import annotations

import json
from pathlib import Path

import click

from edgevit.commands.common import console, load, print_table
from edgevit.errors import UsageError
from edgevit.rewrite.stage import real_inputs
from edgevit.stage_options import stage_options


def _target_choice():
    from edgevit.rewrite.targets import target_names
    return click.Choice(target_names())


@stage_options("rewrite")
@click.command("rewrite")
@click.argument("model", required=False)
@click.option("--out", type=click.Path(file_okay=False), help="New directory for model.pt/.onnx and reports.")
@click.option("--list-passes", is_flag=True, help="List the passes and exit.")
@click.option("--weights", type=click.Path(dir_okay=False), default=None, help="State dict for timm:/factory models.")
@click.option("--trust-checkpoint", is_flag=True, help="Allow loading a pickled nn.Module (.pt).")
def rewrite_cmd(model, target_name, out, disable, gelu, data, report, list_passes, seed, weights, trust_checkpoint,
                distill, epochs, train_data, work_dir, keep_work):
    """Rewrite MODEL into an NPU-native graph (AutoNeural) and prove it: FP32 equivalence per pass,
    target rule check (+ QNN compile for qnn-htp), quantisation-robustness report. With --distill conv,
    train a MobileNetV5-style conv student from the ViT instead and compare the two.

    \b
    Examples:
      edgevit rewrite --list-passes
      edgevit rewrite vit-small --target qnn-htp --out out/vit-small-htp
      edgevit rewrite vit-tiny --target ane --disable split-heads --gelu tanh --out out/ane
      edgevit rewrite vit-small --distill conv --out out/vit-small-student   # resumable: rerun to continue
    """
    from edgevit.rewrite import PASSES
    if list_passes:
        print_table("rewrite passes (in order)", ["pass", "exact", "what it does"],
                    [[p.name, "yes" if p.exact else "reported", p.summary] for p in PASSES])
        return
    if not model or not out:
        raise UsageError("rewrite needs MODEL and --out DIR (or --list-passes)")
    if distill:
        return _distill(model, target_name, out, seed, weights, trust_checkpoint, epochs, train_data, work_dir,
                        keep_work)
    if epochs is not None or work_dir or keep_work:
        raise UsageError("--epochs, --work-dir and --keep-work belong to --distill conv")
    from edgevit.rewrite.artifact import check_out_dir
    from edgevit.rewrite.pipeline import validate_passes
    from edgevit.rewrite.robustness import summary_line
    from edgevit.rewrite.stage import rewrite_stage
    validate_passes(list(disable))
    out_dir = check_out_dir(out)
    module, meta = load(model, weights, trust_checkpoint)
    result = rewrite_stage(module, meta, target_name, data=data, disable=tuple(disable), gelu=gelu, report=report,
                           seed=seed, status=console.status)
    result.save(out_dir)
    rep, reports, meta = result.report, result.report.get("robustness"), result.meta
    target = meta.history[-1]
    print_table(f"{meta.name} → {target['target']}", ["pass", "on", "max rel err", "notes"],
                [[s["pass"], "yes" if s["enabled"] else "no", f"{s['max_rel_err']:.1e}" if s["enabled"] else "-",
                  ", ".join(f"{k}={v}" for k, v in s.items() if k not in ("pass", "enabled", "max_rel_err"))]
                 for s in rep["passes"]])
    console.print(f"violations ({target['target']}): {rep['violations_before']} before → {rep['violations_after']} after; "
                  f"FP32 max rel err {rep['max_rel_err']:.1e} on {rep['samples']} images")
    if reports:
        for k, r in reports.items():
            console.print(summary_line(k, r))
    console.print(f"wrote {out_dir}")


def _distill(model, target_name, out, seed, weights, trust_checkpoint, epochs, train_data, work_dir, keep_work):
    from edgevit.data import parse_data_spec
    from edgevit.rewrite.artifact import check_out_dir
    from edgevit.rewrite.distill import DistillRecipe
    from edgevit.rewrite.distill_stage import distill_conv, validate_teacher, write_student
    from edgevit.rewrite.targets import load_target
    out_dir = check_out_dir(out)
    parse_data_spec(train_data)
    target = load_target(target_name)
    recipe = DistillRecipe(seed=seed, **({"epochs": epochs} if epochs else {})).validate()
    teacher, meta = load(model, weights, trust_checkpoint)
    validate_teacher(teacher, meta)
    work = Path(work_dir) if work_dir else out_dir.with_name(out_dir.name + ".work")
    console.print(f"distilling {meta.name} → conv student; checkpoints in {work} (rerun the command to resume)")
    student_npu, smeta, rep, result, student = distill_conv(teacher, meta, target, recipe, work, train_data)
    write_student(out_dir, student_npu, smeta, rep, result, student, keep_work, work)
    t, s, sm = result["teacher"], result["student"], result["summary"]
    precs = list(t["encoder"])
    print_table(f"{meta.name} (ViT teacher) vs conv student", ["", "teacher", "student"],
                [["test top-1 %", f"{t['test_top1']:.2f}", f"{s['test_top1']:.2f}"],
                 ["params", f"{t['params']:,}", f"{s['params']:,}"],
                 ["ORT ms (1 thread)", f"{t['ort_ms']:.3f}", f"{s['ort_ms']:.3f}"],
                 *[[f"{p} encoder relRMS %", f"{100 * t['encoder'][p]['encoder_rel_rms']:.2f}",
                    f"{100 * s['encoder'][p]['encoder_rel_rms']:.2f}"] for p in precs]])
    console.print(f"student: {rep['check']['violations']} {target.name} violations; "
                  + ", ".join(f"{p} relRMS {sm[f'{p}_rel_rms_ratio']}× lower" for p in precs)
                  + f"; gap {sm['top1_gap_points']:+.2f} points")
    console.print(f"wrote {out_dir}")


@click.command("check")
@click.argument("artifact_or_model")
@click.option("--target", "target_name", type=_target_choice(), default="qnn-htp", show_default=True)
@click.option("--compile/--no-compile", "do_compile", default=True, show_default=True,
              help="For qnn-htp: also compile with onnxruntime-qnn (HTP, CPU fallback disabled).")
@click.option("--data", default="auto:8", show_default=True, help="Calibration inputs for the QNN compile (auto = the model's own data).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--weights", type=click.Path(dir_okay=False), default=None, help="State dict for timm:/factory models.")
@click.option("--trust-checkpoint", is_flag=True, help="Allow loading a pickled nn.Module (.pt).")
def check_cmd(artifact_or_model, target_name, do_compile, data, as_json, weights, trust_checkpoint):
    """List every node of ARTIFACT_OR_MODEL (an .onnx file, a rewrite/export directory, or a model name)
    that the target cannot run, with the pass that fixes it.

    \b
    Examples:
      edgevit check vit-small --target qnn-htp
      edgevit check out/vit-small-htp --target qnn-htp --json
    """
    from edgevit.rewrite.checker import check_model, check_path, total_violations
    from edgevit.rewrite.targets import load_target
    target = load_target(target_name)
    path = Path(artifact_or_model)
    if path.is_dir():
        path = path / "model.onnx"
        if not path.exists():
            raise UsageError(f"{artifact_or_model} holds no model.onnx; give an .onnx file or a model name")
    if path.suffix == ".onnx":
        if not path.exists():
            raise UsageError(f"{path} does not exist")
        calib = _onnx_calibration(path, data) if do_compile else None
        result = check_path(path, target, calib, do_compile)
        name = str(path)
    else:
        module, meta = load(artifact_or_model, weights, trust_checkpoint)
        calib = real_inputs(meta, data, "train", 0)[0].numpy() if do_compile and target.compiler else None
        result = check_model(module, meta.input_shape, target, calib, do_compile)
        name = meta.name
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    rows = [[v["node"], v["op"], v["rule"], v["detail"], v["fix"]]
            for v in [*result["violations"], *result.get("qnn", {}).get("refused", [])]]
    if rows:
        print_table(f"{name}: violations for {target.name}", ["node", "op", "rule", "detail", "fix (pass)"], rows)
    qnn = result.get("qnn")
    if qnn:
        console.print(f"QNN: {qnn['skipped']}" if "skipped" in qnn else
                      f"QNN HTP compile: {'finalised' if qnn['finalized'] else 'FAILED'}, {qnn['nodes_on_htp']} nodes "
                      f"on HTP, {len(qnn['refused'])} refused" + (f" ({qnn['error']})" if qnn["error"] else ""))
    console.print(f"{name}: {total_violations(result)} violations for {target.name}")


def _onnx_calibration(path: Path, data: str):
    """Real inputs shaped like the ONNX graph's input, when the data spec fits it; else None."""
    import onnx
    from edgevit.data import Preprocess, load_data
    dims = [d.dim_value for d in onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim]
    meta_file = path.parent / "meta.json"
    if meta_file.exists():
        pre = Preprocess.from_dict(json.loads(meta_file.read_text())["preprocess"])
    elif len(dims) == 4 and dims[2] > 0:
        pre = Preprocess(size=dims[2], channels=dims[1] or 3, mean=(0.0,) * (dims[1] or 3), std=(1.0,) * (dims[1] or 3))
    else:
        return None
    x, _ = load_data(data, pre, split="train")
    return x.numpy()


COMMANDS = [rewrite_cmd, check_cmd]
