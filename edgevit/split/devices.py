"""Devices and the ED-ViT assignment: which class subset runs where, and how big each sub-model may be.

`--devices 4` means four identical devices; a YAML file lists heterogeneous ones:

    devices:
      - {name: jetson, memory_mb: 8, compute: 2.0, runtime: onnx}
      - {name: pi5,    memory_mb: 2, compute: 1.0}

`compute` is throughput relative to the machine that measures latency (1.0 = this host); `memory_mb`
bounds the sub-model's weights. Sizing: each device gets a parameter budget keep·P·c_d / max(c) (capped
by its memory) and a latency-cost budget latency·C·c_d / max(c), C the original's batch-1 cost (cost.py:
kernel launches + MACs), so sub-models finish together on devices of different speed (the slowest
device sets the parallel latency). Assignment is ED-ViT's greedy: the hardest subset
(most confusion kept inside it) goes to the device with the largest budget, and so on down.
An infeasible plan (a device whose memory cannot hold the smallest sub-model) is a UsageError.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from edgevit.errors import UsageError
from edgevit.yaml_file import read_yaml

RUNTIMES = ("onnx",)


@dataclass(frozen=True)
class Device:
    name: str
    memory_mb: float | None = None     # None: unbounded
    compute: float = 1.0
    runtime: str = "onnx"

    @property
    def ray_resource(self) -> str:
        """The Ray custom resource a node offers to host this device's actor."""
        return f"edgevit-device-{self.name}"

    def to_dict(self) -> dict:
        return {**asdict(self), "ray_resource": self.ray_resource}


def parse_devices(spec: str) -> list[Device]:
    """`4` → four identical devices; a path → the YAML device list. Errors name the fix."""
    if spec.isdigit():
        n = int(spec)
        if n < 1:
            raise UsageError("--devices must be at least 1 (e.g. --devices 4)")
        return [Device(f"device{i}") for i in range(n)]
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"--devices {spec!r} is neither a device count nor a YAML file; write e.g. --devices 4")
    doc = read_yaml(path)
    items = doc.get("devices") if isinstance(doc, dict) else doc
    if not isinstance(items, list) or not items:
        raise UsageError(f"{path} must hold a non-empty list under `devices:` (see `edgevit split --help`)")
    devices = [_device(item, i, path) for i, item in enumerate(items)]
    names = [d.name for d in devices]
    if len(set(names)) != len(names):
        raise UsageError(f"{path}: device names must be unique; {names} repeats one")
    return devices


def _device(item, i: int, path: Path) -> Device:
    if not isinstance(item, dict):
        raise UsageError(f"{path}: device {i} must be a mapping like {{name: pi5, memory_mb: 2, compute: 1.0}}")
    unknown = set(item) - {"name", "memory_mb", "compute", "runtime"}
    if unknown:
        raise UsageError(f"{path}: device {i} has unknown key(s) {sorted(unknown)}; "
                         "allowed: name, memory_mb, compute, runtime")
    name = str(item.get("name", f"device{i}"))
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise UsageError(f"{path}: device name {name!r} may only use letters, digits, '.', '_' and '-'")
    try:
        mem = None if item.get("memory_mb") is None else float(item["memory_mb"])
        compute = float(item.get("compute", 1.0))
    except (TypeError, ValueError) as e:
        raise UsageError(f"{path}: device {name}: memory_mb and compute must be numbers") from e
    if (mem is not None and mem <= 0) or compute <= 0:
        raise UsageError(f"{path}: device {name}: memory_mb and compute must be positive")
    runtime = str(item.get("runtime", "onnx"))
    if runtime not in RUNTIMES:
        raise UsageError(f"{path}: device {name}: runtime {runtime!r} is not supported by split yet; use onnx")
    return Device(name, mem, compute, runtime)


def plan_budgets(devices: list[Device], full_params: int, keep: float, min_params: int,
                 bytes_per_param: float = 4.0) -> list[int]:
    """Parameter budget of each device's sub-model (see module docstring); UsageError when infeasible."""
    top = max(d.compute for d in devices)
    budgets = []
    for d in devices:
        b = int(keep * full_params * d.compute / top)
        if d.memory_mb is not None:
            b = min(b, int(d.memory_mb * 1e6 / bytes_per_param))
        if b < min_params:
            need = min_params * bytes_per_param / 1e6
            raise UsageError(f"device {d.name} cannot hold a sub-model: the smallest needs {min_params} parameters "
                             f"({need:.3f} MB) but its budget allows {b}; raise its memory_mb, --keep, or use "
                             "fewer devices")
        budgets.append(b)
    return budgets


def plan_costs(devices: list[Device], full_cost: int, latency: float, min_cost: int) -> list[float]:
    """Latency-cost budget of each device's sub-model (see module docstring); UsageError when infeasible."""
    top = max(d.compute for d in devices)
    budgets = [latency * full_cost * d.compute / top for d in devices]
    for d, b in zip(devices, budgets):
        if b < min_cost:
            raise UsageError(f"device {d.name} cannot meet --latency {latency:g}: even a one-branch sub-model "
                             f"costs {min_cost / full_cost:.3f}x the original on it; raise --latency or its compute")
    return budgets


def assign(difficulty: list[float], budgets: list[int]) -> list[int]:
    """Device index for each subset: hardest subset → largest budget (greedy, deterministic ties)."""
    subsets = sorted(range(len(difficulty)), key=lambda i: (-difficulty[i], i))
    devices = sorted(range(len(budgets)), key=lambda d: (-budgets[d], d))
    out = [0] * len(difficulty)
    for s, d in zip(subsets, devices):
        out[s] = d
    return out
