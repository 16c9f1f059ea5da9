"""Running a split artifact: the shared fan-out / gather / fuse logic and the `local` executor.

An executor sends the same preprocessed batch to every device, gathers each device's sub-model output
within a deadline and runs the fusion head on the concatenation. A device that fails or misses the
deadline raises `DeviceError` naming it — or, with `degrade=True`, its slice is filled with the fusion
input's training mean (the "no opinion" value) and the prediction lists it in `missing`.
"""
from __future__ import annotations

import concurrent.futures as cf
import time
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


class LocalExecutor(Executor):
    """All sub-models in one process: one onnxruntime session per device, run concurrently in threads
    (onnxruntime releases the GIL inside `run`)."""

    def __init__(self, directory: str | Path, timeout_s: float = 30.0, degrade: bool = False,
                 threads_per_device: int = 1):
        plan = directory if isinstance(directory, SplitPlan) else SplitPlan(directory)
        super().__init__(plan, timeout_s, degrade)
        self.sessions = {d["name"]: ort_session(plan.model_path(d), threads_per_device, manifest_config(d))
                         for d in plan.devices}
        self.pool = cf.ThreadPoolExecutor(max_workers=len(self.sessions), thread_name_prefix="edgevit-device")

    def _run(self, name: str, x: np.ndarray) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        out = self.sessions[name].run(None, {"input": x})[0]
        return out, (time.perf_counter() - t0) * 1e3

    def _gather(self, x):
        futures = {self.pool.submit(self._run, name, x): name for name in self.sessions}
        done, _ = cf.wait(futures, timeout=self.timeout_s)
        outputs, errors, times = {}, {}, {}
        for fut, name in futures.items():
            if fut not in done:
                fut.cancel()
                continue
            try:
                outputs[name], times[name] = fut.result()
            except Exception as e:  # noqa: BLE001 — any session failure is this device's failure
                errors[name] = f"failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        return outputs, errors, times

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def make_executor(kind: str, directory: str | Path, **kwargs) -> Executor:
    """`local` or `ray` (kwargs: timeout_s, degrade, and for ray: address)."""
    if kind == "local":
        kwargs.pop("address", None)
        return LocalExecutor(directory, **kwargs)
    if kind == "ray":
        from edgevit.split.ray_executor import RayExecutor
        return RayExecutor(directory, **kwargs)
    raise UsageError(f"unknown executor {kind!r}; use local or ray")
