"""The distributed executor: one Ray actor per device, pinned to that device's node.

Each device in the manifest names a Ray custom resource (`edgevit-device-<name>`); start the node that
is that device with `ray start --address HEAD --resources '{"edgevit-device-pi5": 1}'`. The actor asks
for one unit of it (and no CPU), so Ray places it only there. Model bytes travel through the object
store — nodes need no shared filesystem. The driver puts each batch once, fans it out, waits with a
deadline and fuses. Without `address`, a local cluster offering every device resource is started
(loopback), which is how the tests run four actors on one machine.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgevit.errors import UsageError
from edgevit.split.plan import DeviceError, Executor, SplitPlan
from runtimes.onnx.session import manifest_config


def _require_ray():
    try:
        import ray
    except ImportError as e:
        raise UsageError("the ray executor needs Ray: pip install 'edgevit[ray]'") from e
    return ray


class _DeviceWorker:
    """Body of the per-device actor: an onnxruntime session over the sub-model bytes."""

    def __init__(self, name: str, model_bytes: bytes, threads: int = 1, config: dict | None = None):
        from edgevit.split.plan import ort_session
        self.name = name
        self.session = ort_session(model_bytes, threads, config)

    def ready(self) -> str:
        return self.name

    def run(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        out = self.session.run(None, {"input": x})[0]
        return out, (time.perf_counter() - t0) * 1e3


class RayExecutor(Executor):
    def __init__(self, directory: str | Path, address: str | None = None, timeout_s: float = 30.0,
                 degrade: bool = False, start_timeout_s: float = 60.0, threads_per_device: int = 1):
        ray = _require_ray()
        plan = directory if isinstance(directory, SplitPlan) else SplitPlan(directory)
        super().__init__(plan, timeout_s, degrade)
        self.ray = ray
        self.owns_cluster = False
        if not ray.is_initialized():
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(address="local", num_cpus=2, resources={d["ray_resource"]: 1 for d in plan.devices},
                         include_dashboard=False, log_to_driver=False)
                self.owns_cluster = True
        actor_cls = ray.remote(num_cpus=0, max_restarts=0, max_task_retries=0)(_DeviceWorker)
        self.actors = {}
        for d in plan.devices:
            blob = ray.put(plan.model_path(d).read_bytes())
            self.actors[d["name"]] = actor_cls.options(resources={d["ray_resource"]: 1},
                                                       name=None).remote(d["name"], blob, threads_per_device,
                                                                        manifest_config(d))
        self._wait_ready(start_timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        """Each actor must start within the deadline; a missing node resource is named, never waited on forever."""
        refs = {a.ready.remote(): name for name, a in self.actors.items()}
        ready, pending = self.ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        for ref in ready:
            try:
                self.ray.get(ref)
            except Exception as e:  # noqa: BLE001
                self.close()
                raise DeviceError(refs[ref], f"could not start its actor ({type(e).__name__})") from e
        if pending:
            name = refs[pending[0]]
            res = next(d["ray_resource"] for d in self.plan.devices if d["name"] == name)
            self.close()
            raise DeviceError(name, f"got no Ray node within {timeout_s:g} s: no node offers resource {res!r} "
                                    f"(start it with ray start --resources '{{\"{res}\": 1}}')")

    def _gather(self, x):
        ref = self.ray.put(x)
        futures = {actor.run.remote(ref): name for name, actor in self.actors.items()}
        ready, _ = self.ray.wait(list(futures), num_returns=len(futures), timeout=self.timeout_s)
        outputs, errors, times = {}, {}, {}
        for r in ready:
            name = futures[r]
            try:
                outputs[name], times[name] = self.ray.get(r)
            except self.ray.exceptions.RayActorError:
                errors[name] = "died (its Ray actor is gone)"
            except Exception as e:  # noqa: BLE001
                errors[name] = f"failed ({type(e).__name__})"
        return outputs, errors, times

    def close(self) -> None:
        for a in getattr(self, "actors", {}).values():
            try:
                self.ray.kill(a)
            except Exception:  # noqa: BLE001 — already gone
                pass
        self.actors = {}
        if self.owns_cluster:
            self.ray.shutdown()
            self.owns_cluster = False
