#!/usr/bin/env python3
"""Classify images with an edgevit artifact on a device: onnxruntime or ai-edge-litert + numpy + Pillow.

No torch and no edgevit install: everything the device needs (preprocessing, labels, input name and
shape) is read from the artifact's manifest.json, so this file is the whole app.

    python classify.py ARTIFACT_DIR image1.png [image2.jpg ...] [--top 5] [--threads 1] [--json [--logits]]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def load_manifest(root: Path) -> dict:
    path = root / "manifest.json"
    if not path.is_file():
        fail(f"{root} has no manifest.json; give an artifact directory written by `edgevit export`")
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        fail(f"{path} is not valid JSON ({e})")
    for key in ("runtime", "entry", "input", "preprocess", "labels", "files"):
        if key not in m:
            fail(f"{path} has no {key!r}; re-export the artifact")
    if m["runtime"] not in ("onnx", "tflite"):
        fail(f"{root} is a {m['runtime']} artifact; this demo runs onnx and tflite artifacts")
    entry = next((f for f in m["files"] if f["path"] == m["entry"]), None)
    model = root / m["entry"]
    if entry is None or not model.is_file():
        fail(f"{model} is missing; re-export the artifact")
    if hashlib.sha256(model.read_bytes()).hexdigest() != entry["sha256"]:
        fail(f"{model} does not match its sha256 in the manifest (corrupt or modified)")
    return m


def preprocess(paths: list[str], spec: dict) -> np.ndarray:
    """Images → float32 (N, C, size, size): [0,1] pixels, bilinear resize, per-channel mean/std."""
    from PIL import Image, UnidentifiedImageError
    size, channels = int(spec["size"]), int(spec["channels"])
    out = np.empty((len(paths), size, size, channels), np.float32)
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                im = im.convert("L" if channels == 1 else "RGB")
                if im.size != (size, size):
                    im = im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
                out[i] = np.asarray(im, np.float32).reshape(size, size, channels)
        except (FileNotFoundError, UnidentifiedImageError, OSError) as e:
            fail(f"cannot read image {p} ({type(e).__name__}); give PNG or JPEG files")
    x = out * np.float32(spec.get("pixel_scale", 1 / 255))
    x = (x - np.asarray(spec["mean"], np.float32)) / np.asarray(spec["std"], np.float32)
    if spec.get("layout", "NCHW") == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, np.float32)


def u8s8_exact() -> bool:
    """True where onnxruntime's default x86 int8 kernels are exact (ARM; x86 with AVX-512 VNNI, read from
    CPUID via numpy). Elsewhere the manifest's `session.x64quantprecision` is needed: x86 without VNNI sums
    u8×s8 products in int16 and saturates. Unknown → False: the exact path is the safe one."""
    import platform
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return True
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as cpu
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as cpu
        except ImportError:
            return False
    return bool(cpu.get("AVX512VNNI"))


class Onnx:
    def __init__(self, root: Path, m: dict, threads: int):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        for k, v in ((m.get("quant") or {}).get("runtime_options") or {}).items():
            if k == "session.x64quantprecision" and u8s8_exact():
                continue   # the default kernels are exact here, and faster
            if k == "edgevit.graph_optimization_level" and v == "basic":
                opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            elif not k.startswith("edgevit."):
                opts.add_session_config_entry(k, str(v))
        self.s = ort.InferenceSession(str(root / m["entry"]), opts, providers=["CPUExecutionProvider"])
        self.name = self.s.get_inputs()[0].name
        self.batch = m["input"]["shape"][0] if isinstance(m["input"]["shape"][0], int) else None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.s.run(None, {self.name: x})[0]


class Tflite:
    def __init__(self, root: Path, m: dict, threads: int):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            try:
                from tflite_runtime.interpreter import Interpreter
            except ImportError:
                fail("tflite artifacts need ai-edge-litert (pip install ai-edge-litert)")
        self.it = Interpreter(model_path=str(root / m["entry"]), num_threads=threads)
        self.it.allocate_tensors()
        self.i, self.o = self.it.get_input_details()[0], self.it.get_output_details()[0]
        self.batch = int(self.i["shape"][0])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        dtype = np.dtype(self.i["dtype"])
        if dtype.kind in "iu":     # full-integer model: quantise the input with the tensor's own scale
            s, zp = self.i["quantization"]
            info = np.iinfo(dtype)
            x = np.clip(np.rint(x / s) + zp, info.min, info.max).astype(dtype)
        self.it.set_tensor(self.i["index"], x)
        self.it.invoke()
        y = self.it.get_tensor(self.o["index"]).copy()
        if y.dtype.kind in "iu":
            s, zp = self.o["quantization"]
            y = (y.astype(np.float32) - zp) * s
        return y.astype(np.float32)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("images", nargs="+")
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print JSON (for scripts and CI)")
    ap.add_argument("--logits", action="store_true", help="with --json: add each image's raw output logits")
    a = ap.parse_args(argv)
    if a.top < 1 or a.threads < 1:
        fail("--top and --threads must be >= 1")
    m = load_manifest(a.artifact)
    x = preprocess(a.images, m["preprocess"])
    model = (Onnx if m["runtime"] == "onnx" else Tflite)(a.artifact, m, a.threads)
    model(x[:1])                                   # warm-up (first call allocates)
    logits, ms = [], []
    for i in range(len(x)):                        # one image per call: what a camera app does
        t = time.perf_counter()
        logits.append(model(x[i:i + 1]))
        ms.append((time.perf_counter() - t) * 1e3)
    z = np.concatenate(logits)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    labels = m["labels"]
    results = [{"image": img, "latency_ms": round(t, 3),
                "top": [{"label": labels[j] if j < len(labels) else f"class_{j}", "p": float(row[j])}
                        for j in np.argsort(-row)[:a.top]]} for img, row, t in zip(a.images, p, ms)]
    if a.logits:                                   # exact float32 values, for parity checks on the device
        for r, row in zip(results, z):
            r["logits"] = [float(v) for v in row]
    if a.json:
        print(json.dumps({"runtime": m["runtime"], "precision": (m.get("quant") or {}).get("precision", "fp32"),
                          "results": results}, indent=2))
        return
    for r in results:
        print(f"{r['image']}  ({r['latency_ms']:.2f} ms, {m['runtime']})")
        for k, t in enumerate(r["top"], 1):
            print(f"  {k}. {t['label']:<16} {t['p']:.4f}")


if __name__ == "__main__":
    main()
