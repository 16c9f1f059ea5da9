"""The split artifact: one directory per device (its sub-model for its runtime), the fusion head, the
torch split model for parity checks, `split_report.json` and `manifest.json` (runtimes/artifact.py:
staged in a temporary directory, sha256 of every file, renamed into place).

manifest["split"]["devices"][i] is everything a device host needs: its model file and sha256, input and
output tensors, its class subset, its expected latency, the Ray resource that pins its actor and, with
`--bits`, its quantised graph's description (runtimes.onnx.quantized). Before commit the files are run
by the local executor and compared with the torch split model (FP32: same top-1, logits within 1e-4;
quantised: the precision's agreement/SQNR bar from runtimes.parity); a failure writes nothing.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from torch import nn

from edgevit.version import __version__
from edgevit.errors import StageError
from edgevit.split.executors import LocalExecutor, SplitPlan
from edgevit.split.model import SplitModel, save_split
from edgevit.split.report import build_report
from runtimes import parity
from runtimes.artifact import ArtifactWriter, sha256_file, tool_versions
from runtimes.onnx import export_onnx
from runtimes.onnx.compact import compact


def _export(module: nn.Module, quantized: bool, input_shape: tuple[int, ...], path: Path,
            input_name: str = "input") -> tuple[Path, dict | None]:
    """FP32 graph, or quant/'s fake-quant module as a real low-bit graph; (path, manifest quant block)."""
    if not quantized:
        return export_onnx(module, input_shape, path, input_names=(input_name,)), None
    from runtimes.onnx.quantized import export_quantized_onnx, spec_from_model
    path.parent.mkdir(parents=True, exist_ok=True)
    block = export_quantized_onnx(module, spec_from_model(module), input_shape, path)
    compact(path)
    return path, block


def check_parity(root: Path, manifest: dict, split: SplitModel, x: torch.Tensor) -> dict:
    """Local executor on the written files vs the torch split model; StageError when it disagrees."""
    with torch.no_grad():
        ref = split(x).numpy()
    with LocalExecutor(SplitPlan(root, manifest=manifest)) as ex:
        got = ex.predict(x.numpy()).logits
    precision = split.quant["bits"] if split.quant else "fp32"
    thresholds = parity.THRESHOLDS[parity.precision_class(precision)]
    metrics = parity.compare(ref, got)
    bad = parity.failures(metrics, thresholds)
    if bad:
        raise StageError(f"split artifact refused: the {precision} ONNX files disagree with the torch split model "
                         f"on {metrics['n']} images: " + "; ".join(bad))
    return {"executor": "local", "precision": precision, "thresholds": thresholds, "metrics": metrics}


def write_split_artifact(out: str | Path, split: SplitModel, plan: dict, original: nn.Module, meta,
                         x_eval: torch.Tensor, y_eval: torch.Tensor, overwrite: bool = False,
                         rounds: int = 100, parity_images: int = 256) -> tuple[dict, dict]:
    """Export, measure and commit; returns (manifest, report). Nothing appears at `out` on failure."""
    input_shape = meta.input_shape
    labels = list(meta.labels)
    quantized = split.quant is not None
    q_fusion = quantized and bool(split.quant["fusion"])
    with ArtifactWriter(out, overwrite=overwrite) as w:
        files, quant_blocks, devices, offset, slices = {}, {}, [], 0, []
        for d, sub in zip(plan["devices"], split.subs):
            files[d["name"]], quant_blocks[d["name"]] = _export(sub, quantized, input_shape,
                                                                w.dir / d["name"] / "submodel.onnx")
            width = sub.config["num_outputs"]
            slices.append([offset, offset + width])
            offset += width
        n_feat = split.fusion.fc1.in_features
        fusion_input = "input" if q_fusion else "features"
        files["fusion"], quant_blocks["fusion"] = _export(split.fusion, q_fusion, (1, n_feat),
                                                          w.dir / "fusion" / "fusion.onnx", fusion_input)
        save_split(split, w.dir / "torch")
        configs = {k: dict((b or {}).get("runtime_options") or {}) for k, b in quant_blocks.items()}
        with tempfile.TemporaryDirectory() as tmp:
            files["original"] = export_onnx(original, input_shape, Path(tmp) / "original.onnx")
            report = build_report(split, plan, original, input_shape, files, x_eval, y_eval, labels, rounds=rounds,
                                  configs=configs)
        report["plan"] = {k: plan[k] for k in ("options", "confusion")}
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
                "hidden_per_block": d["hidden"], "branches": d["branches"], "budget_params": d["budget_params"],
                "cost_share": d["cost_share"], "expected_latency_ms": rep["expected_latency_ms"]["1"],
                "quant": quant_blocks[d["name"]], "distill": d["distill"]})
        fusion = {"model": "fusion/fusion.onnx", "sha256": sha256_file(files["fusion"]),
                  "input": {"name": fusion_input, "shape": ["batch", n_feat], "dtype": "float32"},
                  "output": {"name": "logits", "shape": ["batch", len(labels)], "dtype": "float32"},
                  "slices": slices, "fill": split.fusion.mean.tolist(), "quant": quant_blocks["fusion"]}
        manifest = {
            "runtime": "split", "entry": "fusion/fusion.onnx",
            "model": {"name": meta.name, "source": meta.source, "family": meta.family,
                      "history": [*meta.history, {"stage": "split", "devices": len(devices)}],
                      "reload": {"torch": "torch/split_config.json + torch/split.safetensors"}},
            "input": {"name": "input", "shape": list(input_shape), "dtype": "float32"},
            "output": {"name": "logits", "shape": ["batch", len(labels)], "dtype": "float32"},
            "preprocess": meta.preprocess.to_dict(), "labels": labels,
            "quant": ({**split.quant, "precision": split.quant["bits"], "parts": "devices + fusion" if q_fusion
                       else "devices (fusion head FP32)"} if quantized else None),
            "parts": [*({"name": d["name"], "path": d["dir"], "role": "device"} for d in devices),
                      {"name": "fusion", "path": "fusion", "role": "fusion"}],
            "split": {"method": "ED-ViT (class-wise sub-models, structured head/MLP pruning, distillation, "
                                "fusion MLP)", "devices": devices, "fusion": fusion},
            "metrics": {"accuracy": report["accuracy"], "size": report["size"], "latency": report["latency"]},
            "tools": {"edgevit": __version__, **tool_versions("torch", "onnx", "onnxruntime")},
        }
        report["parity"] = manifest["parity"] = check_parity(w.dir, manifest, split, x_eval[:parity_images])
        (w.dir / "split_report.json").write_text(json.dumps(report, indent=2) + "\n")
        manifest = w.commit(manifest)
    return manifest, report
