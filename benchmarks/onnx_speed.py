"""INT8 vs FP32 on onnxruntime CPU, batch 1, one thread: which graph form reaches the speed target.

For each model (bundled checkpoint when committed, else random weights — say which in the output) this
writes, side by side: the FP32 artifact; edgevit's w8a8 graph (per-token dynamic activations, MatMulInteger);
and as a reference onnxruntime's own `quantize_dynamic` (per-tensor dynamic, fused DynamicQuantizeMatMul)
applied to the FP32 graph. Then `runtimes.bench.bench_many` times them in fresh processes.

Run on a quiet machine:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/onnx_speed.py --out benchmarks/results
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from edgevit.data import load_data  # noqa: E402
from edgevit.models.bundled import BUNDLED, FASHION_MNIST_PREPROCESS as PRE, LABELS  # noqa: E402
from runtimes.artifact import ArtifactWriter, load_artifact  # noqa: E402
from runtimes.bench import bench_many  # noqa: E402
from runtimes.onnx.artifact import export_onnx_artifact  # noqa: E402
from runtimes.onnx.quantspec import ActQuant  # noqa: E402
from test_runtime_onnx import _FakeQuant, _spec  # noqa: E402  (round-to-nearest spec + torch reference)


def _model(name):
    try:
        from edgevit.models.registry import load_model
        return load_model(name)[0], "trained"
    except Exception:  # noqa: BLE001 — no checkpoint yet
        torch.manual_seed(0)
        return BUNDLED[name]["factory"]().eval(), "random"


def _ort_dynamic(fp32_dir: Path, out: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    art = load_artifact(fp32_dir)
    with ArtifactWriter(out, overwrite=True) as w:
        quantize_dynamic(str(art.entry), str(w.dir / "model.onnx"), weight_type=QuantType.QInt8, per_channel=True)
        m = dict(art.manifest)
        m.pop("files")
        w.commit({**m, "quant": {"precision": "w8a8", "graph_form": "ort-quantize_dynamic (per-tensor, reference)"},
                  "parity": {"thresholds": {"top1_agreement": 0.995}}})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--iters", type=int, default=500)
    ap.add_argument("--models", default="vit-small,mobilenet-mini")
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out)
    x, y = load_data("fashion-mnist:256", PRE, "test", seed=0)
    x, y = x.numpy(), y.numpy()
    results = {}
    for name in a.models.split(","):
        model, weights = _model(name)
        d = out / "onnx_speed" / name
        shutil.rmtree(d, ignore_errors=True)
        kw = dict(input_shape=(1, 1, 28, 28), preprocess=PRE.to_dict(), labels=list(LABELS), parity_inputs=x,
                  parity_labels=y, model_info={"name": name})
        export_onnx_artifact(model, d / "fp32", **kw)
        fq = _FakeQuant(model, _spec(model, "int8", act=ActQuant("int8", "per-token")))
        export_onnx_artifact(fq, d / "w8a8-per-token", quant_spec=fq.spec, **kw)
        _ort_dynamic(d / "fp32", d / "w8a8-ort-dynamic")
        rows = bench_many([str(d / k) for k in ("fp32", "w8a8-per-token", "w8a8-ort-dynamic")], iters=a.iters)
        base = rows[0]["p50_ms"]
        for r in rows:
            r["speedup_p50"] = round(base / r["p50_ms"], 3)
            print(f"{name:15s} {weights:8s} {Path(r['artifact']).name:18s} p50 {r['p50_ms']:.3f} ms  "
                  f"x{r['speedup_p50']:.2f}  {r['file_bytes'] / 1e6:.3f} MB")
        results[name] = {"weights": weights, "rows": rows}
    (out / "onnx_speed.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
