"""Write a rewrite result directory atomically: model.pt, model.onnx, meta.json, rewrite.json (or
distill.json + report.md + student.safetensors for the conv student), robustness.png and a manifest
with the sha256 of every file."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from edgevit.version import __version__
from edgevit.errors import UsageError


def check_out_dir(out: str | Path) -> Path:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} exists and is not empty; choose a new --out directory")
    return out


def write_artifact(out: Path, model, meta, report: dict, robustness_reports: dict | None,
                   report_name: str = "rewrite.json", extra: dict | None = None) -> Path:
    """`extra`: more files, name → str (text) or a callable writing to the path it is given."""
    from edgevit.rewrite.checker import export_for_check
    from edgevit.rewrite.robustness import plot
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".rewrite-", dir=out.parent))
    os.chmod(tmp, 0o755)                         # mkdtemp's 0700 would survive the rename
    try:
        torch.save(model, tmp / "model.pt")
        export_for_check(model, meta.input_shape, tmp / "model.onnx")
        (tmp / "meta.json").write_text(json.dumps(meta.to_dict(), indent=2))
        (tmp / report_name).write_text(json.dumps(report, indent=2, default=float))
        for name, content in (extra or {}).items():
            if callable(content):
                content(tmp / name)
            else:
                (tmp / name).write_text(content)
        if robustness_reports:
            plot(robustness_reports, tmp / "robustness.png")
        files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(tmp.iterdir())}
        manifest = {"runtime": "onnx", "stage": "rewrite", "target": report["target"],
                    "input_shape": list(getattr(model, "edgevit_static_shape", meta.input_shape)),
                    "input_dtype": "float32", "preprocess": meta.preprocess.to_dict(), "labels": list(meta.labels),
                    "tool_version": __version__, "files": files}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out
