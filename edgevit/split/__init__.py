"""ED-ViT: split one ViT into class-wise sub-models for N edge devices plus a fusion head.

    from edgevit.split import SplitOptions, build_split, write_split_artifact, make_executor
    split, plan = build_split(vit, x_train, y_train, parse_devices("4"), SplitOptions())
    write_split_artifact("out/split", split, plan, vit, meta, x_test, y_test)
    with make_executor("ray", "out/split") as ex:
        pred = ex.predict(x)          # pred.logits, pred.missing

Modules: partition (class subsets), prune + subvit (class-wise structured pruning of branches, heads and
units), cost (the batch-1 latency model the pruning budget counts in), distill (sub-model and fusion
training), quantize (`--bits`: quant/ per sub-model), devices (budgets and assignment), pipeline (all of
it), artifact + report (files, manifest, parity, measured numbers), plan + executors + ray_executor (running it).
"""
from edgevit.split.devices import Device, parse_devices
from edgevit.split.distill import DistillRecipe
from edgevit.split.executors import DeviceError, LocalExecutor, Prediction, SplitPlan, make_executor
from edgevit.split.model import SplitModel, load_split
from edgevit.split.pipeline import SplitOptions, build_split


def write_split_artifact(*args, **kwargs):
    """See `edgevit.split.artifact.write_split_artifact` (imported lazily: it pulls in onnx)."""
    from edgevit.split.artifact import write_split_artifact as write
    return write(*args, **kwargs)


__all__ = ["Device", "parse_devices", "DistillRecipe", "DeviceError", "LocalExecutor", "Prediction", "SplitPlan",
           "make_executor", "SplitModel", "load_split", "SplitOptions", "build_split", "write_split_artifact"]
