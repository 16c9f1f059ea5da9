"""Target rule tables: YAML files in `targets/`, one per NPU. Add a target by dropping a file there."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from edgevit.errors import UsageError

TARGET_DIR = Path(__file__).parent / "targets"
REQUIRED = ("name", "ops", "max_rank", "dtypes")


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    ops: frozenset[str]
    max_rank: int
    dtypes: frozenset[str]
    max_tensor_bytes: int | None = None
    max_dim: int | None = None
    gelu: str = "op"
    compiler: str | None = None
    fixes: dict = field(default_factory=dict)

    def fix_for(self, key: str) -> str:
        return self.fixes.get(key, "-")


def target_names() -> list[str]:
    return sorted(p.stem for p in TARGET_DIR.glob("*.yaml"))


def load_target(name: str) -> Target:
    path = TARGET_DIR / f"{name}.yaml"
    if not path.exists():
        raise UsageError(f"unknown target {name!r}; choose one of {', '.join(target_names())}")
    d = yaml.safe_load(path.read_text())
    missing = [k for k in REQUIRED if k not in d]
    if missing:
        raise UsageError(f"target file {path} lacks {missing}")
    return Target(d["name"], d.get("description", ""), frozenset(d["ops"]), int(d["max_rank"]),
                  frozenset(d["dtypes"]), d.get("max_tensor_bytes"), d.get("max_dim"), d.get("gelu", "op"),
                  d.get("compiler"), dict(d.get("fixes", {})))
