"""What flows between stages, and how a finished stage is kept on disk for resuming.

The pipeline carries the *float* model plus the quantisation record (spec options + calibration)
rather than only the quantised model: stages that change structure or train (rewrite, split
distillation, stitch training) work on float modules, and the pipeline then re-applies the same spec
and the same calibration images to their output, so the quantisation stays valid for what is exported.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

STATE_FILE = "state.pt"
STAGE_FILE = "stage.json"


@dataclass
class State:
    float_model: nn.Module
    meta: object                         # edgevit.models.registry.ModelMeta
    quant: dict | None = None            # quantize stage options (re-applied after later stages)
    qmodel: nn.Module | None = None      # the quantised (fake-quant) model; not saved, rebuilt on resume
    notes: list[str] = field(default_factory=list)
    artifacts: list[dict] = field(default_factory=list)

    @property
    def model(self) -> nn.Module:
        """The torch reference for everything downstream: quantised if a quantize stage ran."""
        return self.qmodel if self.qmodel is not None else self.float_model


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_stage(stage_dir: Path, state: State, record: dict) -> None:
    """Write state.pt + stage.json into a temp sibling, then rename: a killed stage leaves no half output."""
    stage_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{stage_dir.name}.", suffix=".partial", dir=stage_dir.parent))
    try:
        if stage_dir.exists():   # keep files the stage wrote itself (artifacts, reports)
            for p in stage_dir.iterdir():
                if p.name not in (STATE_FILE, STAGE_FILE):
                    os.replace(p, tmp / p.name)
        torch.save({"float_model": state.float_model, "meta": state.meta.to_dict(), "quant": state.quant,
                    "notes": state.notes, "artifacts": state.artifacts}, tmp / STATE_FILE)
        (tmp / STAGE_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
        if stage_dir.exists():
            shutil.rmtree(stage_dir)
        os.replace(tmp, stage_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_stage(stage_dir: Path, key: str) -> tuple[State, dict] | None:
    """The saved state of a finished stage whose inputs/options hash is `key`; None if absent or stale."""
    rec_path, st_path = stage_dir / STAGE_FILE, stage_dir / STATE_FILE
    if not (rec_path.is_file() and st_path.is_file()):
        return None
    try:
        record = json.loads(rec_path.read_text())
    except json.JSONDecodeError:
        return None
    if record.get("key") != key:
        return None
    from edgevit.models.registry import ModelMeta
    # our own file, written by save_stage in this run directory: full modules are pickled
    d = torch.load(st_path, weights_only=False)
    state = State(d["float_model"], ModelMeta.from_dict(d["meta"]), d["quant"], None, d["notes"], d["artifacts"])
    if state.quant is not None:   # quantised modules are built per model and don't pickle: rebuild (seeded)
        from edgevit.pipeline.quantize import quantize_with
        state.qmodel = quantize_with(state.float_model, state.meta, state.quant)[0]
    return state, record
