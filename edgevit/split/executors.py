"""Running a split artifact: the `local` executor and `make_executor` (the shared logic is in `plan`).

An executor sends the same preprocessed batch to every device, gathers each device's sub-model output
within a deadline and runs the fusion head on the concatenation. A device that fails or misses the
deadline raises `DeviceError` naming it — or, with `degrade=True`, its slice is filled with the fusion
input's training mean (the "no opinion" value) and the prediction lists it in `missing`.
"""
from __future__ import annotations

import concurrent.futures as cf
import time
from pathlib import Path

import numpy as np

from edgevit.errors import UsageError
from edgevit.split.plan import DeviceError, Executor, Prediction, SplitPlan, ort_session
from runtimes.onnx.session import manifest_config

__all__ = ["DeviceError", "Executor", "LocalExecutor", "Prediction", "SplitPlan", "make_executor", "ort_session"]


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
