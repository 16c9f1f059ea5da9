"""The split artifact: one directory per device (its sub-model for its runtime), the fusion head, the
torch split model for parity checks, `split_report.json` and `manifest.json` (runtimes/artifact.py:
staged in a temporary directory, sha256 of every file, renamed into place).

manifest["split"]["devices"][i] is everything a device host needs: its model file and sha256, input and
output tensors, its class subset, its expected latency and the Ray resource that pins its actor.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from torch import nn

from edgevit import __version__
from edgevit.split.model import SplitModel, save_split
from edgevit.split.report import build_report
from runtimes.artifact import ArtifactWriter, sha256_file, tool_versions
from runtimes.onnx import export_onnx


def write_split_artifact(out: str | Path, split: SplitModel, plan: dict, original: nn.Module, meta,
                         x_eval: torch.Tensor, y_eval: torch.Tensor, overwrite: bool = False,
                         rounds: int = 100) -> tuple[dict, dict]:
    """Export, measure and commit; returns (manifest, report). Nothing appears at `out` on failure."""
    input_shape = meta.input_shape
    labels = list(meta.labels)
    with ArtifactWriter(out, overwrite=overwrite) as w:
        files, devices, offset, slices = {}, [], 0, []
        for d, sub in zip(plan["devices"], split.subs):
            path = export_onnx(sub, input_shape, w.dir / d["name"] / "submodel.onnx")
            files[d["name"]] = path
            width = sub.config["num_outputs"]
            slices.append([offset, offset + width])
            offset += width
        n_feat = split.fusion.fc1.in_features
        files["fusion"] = export_onnx(split.fusion, (1, n_feat), w.dir / "fusion" / "fusion.onnx",
                                      input_names=("features",))
        save_split(split, w.dir / "torch")
        with tempfile.TemporaryDirectory() as tmp:
            files["original"] = export_onnx(original, input_shape, Path(tmp) / "original.onnx")
            report = build_report(split, plan, original, input_shape, files, x_eval, y_eval, labels, rounds=rounds)
        report["plan"] = {k: plan[k] for k in ("options", "confusion")}
        (w.dir / "split_report.json").write_text(json.dumps(report, indent=2) + "\n")
        for d, rep, (lo, hi) in zip(plan["devices"], report["devices"], slices):
            rel = f"{d['name']}/submodel.onnx"
            devices.append({
                "name": d["name"], "dir": d["name"], "model": rel, "sha256": sha256_file(w.dir / rel),
                "runtime": d["runtime"], "ray_resource": d["ray_resource"], "memory_mb": d["memory_mb"],
                "compute": d["compute"], "classes": d["classes"], "class_labels": [labels[c] for c in d["classes"]],
                "input": {"name": "input", "shape": list(input_shape), "dtype": "float32"},
                "output": {"name": "logits", "shape": ["batch", hi - lo], "dtype": "float32",
                           "meaning": "logits of its classes in order, then 'other'"},
                "params": rep["params"], "macs": rep["macs"], "heads_per_block": d["heads"],
                "hidden_per_block": d["hidden"], "budget_params": d["budget_params"],
                "expected_latency_ms": rep["expected_latency_ms"]["1"], "distill": d["distill"]})
        fusion = {"model": "fusion/fusion.onnx", "sha256": sha256_file(files["fusion"]),
                  "input": {"name": "features", "shape": ["batch", n_feat], "dtype": "float32"},
                  "output": {"name": "logits", "shape": ["batch", len(labels)], "dtype": "float32"},
                  "slices": slices, "fill": split.fusion.mean.tolist()}
        manifest = {
            "runtime": "split", "entry": "fusion/fusion.onnx",
            "model": {"name": meta.name, "source": meta.source, "family": meta.family,
                      "history": [*meta.history, {"stage": "split", "devices": len(devices)}],
                      "reload": {"torch": "torch/split_config.json + torch/split.safetensors"}},
            "input": {"name": "input", "shape": list(input_shape), "dtype": "float32"},
            "output": {"name": "logits", "shape": ["batch", len(labels)], "dtype": "float32"},
            "preprocess": meta.preprocess.to_dict(), "labels": labels, "quant": None,
            "parts": [*({"name": d["name"], "path": d["dir"], "role": "device"} for d in devices),
                      {"name": "fusion", "path": "fusion", "role": "fusion"}],
            "split": {"method": "ED-ViT (class-wise sub-models, structured head/MLP pruning, distillation, "
                                "fusion MLP)", "devices": devices, "fusion": fusion},
            "metrics": {"accuracy": report["accuracy"], "size": report["size"], "latency": report["latency"]},
            "tools": {"edgevit": __version__, **tool_versions("torch", "onnx", "onnxruntime")},
        }
        manifest = w.commit(manifest)
    return manifest, report
