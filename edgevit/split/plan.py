"""What every split executor shares: the artifact's plan, the device error, the prediction, and the
fan-out / gather / fuse logic of `Executor` (the local and Ray executors differ only in where sub-models run).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgevit.errors import StageError, UsageError
from runtimes.onnx.session import cpu_session, manifest_config


class DeviceError(StageError):
    """A device died, failed or timed out mid-run; the message names it."""

    def __init__(self, device: str, reason: str):
        super().__init__(f"device {device} {reason}; rerun with --degrade to predict from the remaining devices")
        self.device = device


@dataclass
class Prediction:
    logits: np.ndarray                      # (B, K) fused logits
    missing: list[str] = field(default_factory=list)   # devices that did not answer (degraded when non-empty)
    device_ms: dict[str, float] = field(default_factory=dict)

    @property
    def degraded(self) -> bool:
        return bool(self.missing)

    @property
    def top1(self) -> np.ndarray:
        return self.logits.argmax(-1)


class SplitPlan:
    """The parts of a split artifact an executor needs, read from its verified manifest."""

    def __init__(self, directory: str | Path, verify: bool = True, manifest: dict | None = None):
        """`manifest` given: use it for the files under `directory` as they are (the parity check run
        while the artifact is still being written); otherwise load and verify `directory`."""
        if manifest is None:
            from runtimes.artifact import load_artifact
            from runtimes.errors import RuntimeArtifactError
            try:
                art = load_artifact(directory, verify=verify)
            except RuntimeArtifactError as e:
                raise UsageError(str(e)) from e
            if art.runtime != "split":
                raise UsageError(f"{directory} is a {art.runtime} artifact, not a split one; "
                                 "create it with `edgevit split`")
            directory, manifest = art.root, art.manifest
        self.root, self.manifest = Path(directory), manifest
        self.devices: list[dict] = manifest["split"]["devices"]
        self.fusion: dict = manifest["split"]["fusion"]
        self.input_shape = tuple(manifest["input"]["shape"])

    def model_path(self, device: dict) -> Path:
        return self.root / device["model"]

    def fuse_input(self, outputs: dict[str, np.ndarray | None], batch: int) -> np.ndarray:
        """Concatenate device outputs in manifest order; a missing one becomes the training mean."""
        parts = []
        for d, (lo, hi) in zip(self.devices, self.fusion["slices"]):
            out = outputs.get(d["name"])
            parts.append(out if out is not None else
                         np.broadcast_to(np.asarray(self.fusion["fill"][lo:hi], np.float32), (batch, hi - lo)))
        return np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32)


def ort_session(model: Path | bytes, threads: int = 1, config: dict | None = None):
    """A sequential, `threads`-thread CPU session (runtimes.onnx.session: exact int8 on any x86)."""
    return cpu_session(model, threads, config)


class Executor:
    """Base: subclasses implement `_launch(x) -> {device: handle}` and `_collect(handles, deadline)`."""

    def __init__(self, plan: SplitPlan, timeout_s: float = 30.0, degrade: bool = False):
        if timeout_s <= 0:
            raise UsageError("--timeout must be positive")
        self.plan, self.timeout_s, self.degrade = plan, timeout_s, degrade
        self.fusion = ort_session(plan.root / plan.fusion["model"], config=manifest_config(plan.fusion))
        self.fusion_input = self.fusion.get_inputs()[0].name

    def predict(self, x: np.ndarray) -> Prediction:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.plan.input_shape[1:]:
            raise UsageError(f"input of shape {x.shape} does not match the split model's "
                             f"(B, {', '.join(map(str, self.plan.input_shape[1:]))})")
        outputs, errors, times = self._gather(x)
        missing = [d["name"] for d in self.plan.devices if outputs.get(d["name"]) is None]
        if missing and not self.degrade:
            name = missing[0]
            raise DeviceError(name, errors.get(name, f"did not answer within {self.timeout_s:g} s"))
        if len(missing) == len(self.plan.devices):
            raise DeviceError(missing[0], "and every other device failed; nothing to fuse")
        logits = self.fusion.run(None, {self.fusion_input: self.plan.fuse_input(outputs, len(x))})[0]
        return Prediction(logits, missing, times)

    def _gather(self, x: np.ndarray) -> tuple[dict, dict, dict]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
