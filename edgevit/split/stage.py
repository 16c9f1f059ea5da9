"""The split stage as one call, for `edgevit split`, `edgevit.split_model` and the pipeline: checks, data,
class-wise pruning + distillation + fusion (resumable), the measured artifact."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from edgevit.errors import UsageError
from edgevit.models.meta import ModelMeta
from edgevit.split.devices import Device, parse_devices
from edgevit.split.model import SplitModel, SplitQuant


@dataclass
class SplitResult:
    """The split (torch sub-models + fusion head), its device plan, the artifact written at `out` and its
    report (sizes, MACs, measured latencies, accuracy vs the unsplit model, ONNX-vs-torch parity)."""
    model: SplitModel
    plan: dict
    out: Path
    report: dict
    meta: ModelMeta


def split_stage(module: nn.Module, meta: ModelMeta, devices: str | int | list[Device], out: str | Path, *,
                keep: float = 0.2, latency: float = 0.3, bits: str | None = None, fmt: str = "int",
                quantize_fusion: bool = False, data: str = "auto", eval_data: str = "auto",
                train_images: int = 12000, fusion_images: int = 2000, epochs: int = 4, batch_size: int = 128,
                lr: float = 1e-3, seed: int = 0, work_dir: str | Path | None = None, latency_rounds: int = 100,
                overwrite: bool = False, progress: bool = True) -> SplitResult:
    """Split `module` (a timm-style ViT) across `devices` (a count, a devices YAML path or Device list) and
    write the artifact at `out`. Everything that can be checked without training is checked first."""
    from edgevit.data import load_data, parse_data_spec
    from edgevit.split.artifact import write_split_artifact
    from edgevit.split.distill import DistillRecipe
    from edgevit.split.pipeline import SplitOptions, build_split, validate
    from runtimes.artifact import check_destination
    from runtimes.errors import RuntimeArtifactError
    devices = devices if isinstance(devices, list) else parse_devices(str(devices))
    try:
        check_destination(out, overwrite)
    except RuntimeArtifactError as e:
        raise UsageError(str(e)) from e
    if lr <= 0:
        raise UsageError("--lr must be positive")
    if quantize_fusion and not bits:
        raise UsageError("--quantize-fusion needs --bits (e.g. --bits w8a8)")
    squant = SplitQuant(bits.lower(), fmt.lower(), quantize_fusion) if bits else None
    if squant is not None:
        squant.spec()
    train_spec, eval_spec = parse_data_spec(data), parse_data_spec(eval_data)
    if "fashion-mnist" in (train_spec.kind, eval_spec.kind) and len(meta.labels) != 10:
        raise UsageError(f"{meta.name} predicts {len(meta.labels)} classes but Fashion-MNIST has 10; "
                         "use --data/--eval-data folder:PATH with one sub-folder per class")
    options = SplitOptions(keep=keep, latency=latency, quant=squant, train_images=train_images,
                           fusion_images=fusion_images, seed=seed,
                           distill=DistillRecipe(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed))
    validate(module, devices, options, len(meta.labels))
    x, y = load_data(train_spec, meta.preprocess, split="train", seed=seed)
    xe, ye = load_data(eval_spec, meta.preprocess, split="test", seed=seed)
    if y is None or ye is None:
        raise UsageError(f"split trains on labelled images, and {data if y is None else eval_data} has no labels; "
                         "use fashion-mnist or folder:PATH with one sub-folder per class")
    work = Path(work_dir) if work_dir else Path(".edgevit-split") / f"{meta.name.replace('/', '_')}-seed{seed}"
    split, plan = build_split(module, x, y, devices, options, work_dir=work, progress=progress)
    _, report = write_split_artifact(out, split, plan, module, meta, xe, ye, overwrite=overwrite, rounds=latency_rounds)
    smeta = meta.with_stage("split", devices=len(devices), keep=keep, epochs=epochs)
    return SplitResult(split, plan, Path(out), report, smeta)
