"""`edgevit rewrite MODEL --distill conv`: distil the ViT into the conv student, rewrite the student for
the target (BN folding, Linear → 1×1 conv, static shape — equivalence-checked like any rewrite),
prove it runs on the target, and compare it with the teacher."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from edgevit.errors import StageError, UsageError
from edgevit.rewrite.checker import check_model, total_violations
from edgevit.rewrite.distill import DistillRecipe, distill
from edgevit.rewrite.pipeline import rewrite_model
from edgevit.rewrite.targets import Target
from edgevit.rewrite.vit import is_vit

MAX_SIDE = 64     # the student's strides and the training budget are sized for small inputs


def validate_teacher(model, meta) -> None:
    if not is_vit(model) or not hasattr(model, "forward_features"):
        raise UsageError(f"--distill conv needs a ViT teacher (vit-tiny, vit-small, vit-base); {meta.name} is not one")
    if meta.preprocess.size > MAX_SIDE:
        raise UsageError(f"{meta.name} takes {meta.preprocess.size}² inputs; --distill conv trains on CPU on "
                         f"≤{MAX_SIDE}² images (the Fashion-MNIST ViTs)")


def load_training_data(train_spec: str, test_spec: str, meta, seed: int):
    """(train, test) as preprocessed (x, y) from the train and test splits; both need labels."""
    from edgevit.data import load_data
    train = load_data(train_spec, meta.preprocess, split="train", seed=seed)
    test = load_data(test_spec, meta.preprocess, split="test", seed=seed)
    if train[1] is None or test[1] is None:
        raise UsageError(f"{train_spec} has no labels; distillation needs a labelled set, e.g. fashion-mnist")
    return train, test


def distill_conv(teacher, meta, target: Target, recipe: DistillRecipe, work_dir: Path, train_spec: str = "fashion-mnist",
                 test_spec: str = "fashion-mnist", progress: bool = True, latency_rounds: int = 10):
    """Returns (student in NPU form, its ModelMeta, report, comparison, trained student with BN)."""
    from edgevit.rewrite.compare import compare
    validate_teacher(teacher, meta)
    train, test = load_training_data(train_spec, test_spec, meta, recipe.seed)
    student, record = distill(teacher, train, test, recipe, work_dir, progress=progress)
    x_eq = test[0][:256]
    student_npu, rep = rewrite_model(student, target, x_eq, meta.input_shape, y=test[1][:256])
    teacher_npu, trep = rewrite_model(teacher, target, x_eq, meta.input_shape, y=test[1][:256])
    if rep["max_rel_err"] > 1e-4:
        raise StageError(f"the student's rewrite moved outputs by {rep['max_rel_err']:.1e}")
    calib = train[0][torch.randperm(len(train[0]), generator=torch.Generator().manual_seed(recipe.seed))[:256]]
    check = check_model(student_npu, meta.input_shape, target, calib[:8].numpy())
    check_summary = {"target": target.name, "violations": total_violations(check),
                     "qnn": {k: v for k, v in check.get("qnn", {}).items() if k != "host_boundary"}}
    result = compare(teacher, student, teacher_npu, student_npu, meta.input_shape, test, calib, test[0][:128],
                     latency_rounds=latency_rounds)
    report = {"teacher_model": meta.name, "target": target.name, "distill": record, "rewrite": rep,
              "teacher_rewrite_max_rel_err": trep["max_rel_err"], "check": check_summary,
              "check_detail": check, **{k: result[k] for k in ("teacher", "student", "summary", "latency", "robustness")}}
    smeta = meta.with_stage("distill", method="conv", teacher=meta.name, epochs=recipe.epochs, seed=recipe.seed,
                            test_top1=record["test_top1"])
    smeta = type(meta)(f"{meta.name}-conv-student", smeta.preprocess, smeta.labels, "distilled", "fmnist-cnn",
                       "MobileNetV5-style UIB conv student distilled from " + meta.name, smeta.history)
    smeta = smeta.with_stage("rewrite", target=target.name, passes=[s["pass"] for s in rep["passes"] if s["enabled"]],
                             max_rel_err=rep["max_rel_err"])
    return student_npu, smeta, report, result, student


def write_student(out_dir: Path, student_npu, smeta, report: dict, result: dict, student, keep_work: bool,
                  work_dir: Path) -> Path:
    from safetensors.torch import save_file
    from edgevit.rewrite.artifact import write_artifact
    from edgevit.rewrite.compare import markdown
    md = markdown(report["teacher_model"], result, report["distill"], report["check"])
    extra = {"report.md": md,
             "student.safetensors": lambda p: save_file({k: v.contiguous() for k, v in student.state_dict().items()},
                                                        str(p), metadata={"config": json.dumps(student.config.to_dict())})}
    write_artifact(out_dir, student_npu, smeta, report, {f"teacher {report['teacher_model']} (rewritten)":
                                                          result["robustness"]["teacher"],
                                                          "conv student (rewritten)": result["robustness"]["student"]},
                   report_name="distill.json", extra=extra)
    if not keep_work:
        shutil.rmtree(work_dir, ignore_errors=True)
    return out_dir
