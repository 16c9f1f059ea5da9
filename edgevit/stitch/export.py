"""The stitched artifact: shared weights stored once, one small ONNX graph per configuration.

Every configuration is exported with `runtimes.onnx.export_onnx`; its initializers are then moved into
one `weights.bin`, deduplicated by content (sha256), and the graph keeps only ONNX external-data
references (offset, length) into that file. Configurations that run the same block read the same bytes,
so the artifact costs about the sum of the anchors plus the stitching layers, not one model per config.
Each graph is parity-checked (ORT vs torch) and timed with onnxruntime on one thread before commit.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from runtimes import parity
from runtimes.artifact import ArtifactWriter, tool_versions
from runtimes.errors import ParityError
from runtimes.onnx.export import export_onnx
from runtimes.onnx.session import cpu_session
from runtimes.onnx.compact import compact_model
from edgevit.stitch.model import ConfigView, StitchedModel

GRAPH_DIR = "onnx"
WEIGHTS_FILE = "weights.bin"          # inside GRAPH_DIR: ORT resolves external data next to the graph
INDEX_FILE = "configs.json"
TORCH_FILE = "stitched.safetensors"
INLINE_BYTES = 256          # tensors smaller than this (shape constants, scalars) stay in the graph
ALIGN = 64


class SharedWeights:
    """Appends unique tensors to one file and rewrites graph initializers to point into it."""

    def __init__(self, path: Path):
        self.path, self.table, self.size = path, {}, 0
        self.file = open(path, "wb")

    def externalise(self, model) -> None:
        from onnx import TensorProto, numpy_helper
        from onnx.external_data_helper import set_external_data
        for t in model.graph.initializer:
            raw = t.raw_data if t.HasField("raw_data") else numpy_helper.to_array(t).tobytes()
            if len(raw) < INLINE_BYTES:
                continue
            key = hashlib.sha256(raw).hexdigest()
            if key not in self.table:
                pad = (-self.size) % ALIGN
                self.file.write(b"\0" * pad + raw)
                self.table[key] = (self.size + pad, len(raw))
                self.size += pad + len(raw)
            offset, length = self.table[key]
            dims, dtype, name = list(t.dims), t.data_type, t.name
            t.Clear()
            t.name, t.data_type = name, dtype
            t.dims.extend(dims)
            t.raw_data = b""
            set_external_data(t, self.path.name, offset, length)
            t.ClearField("raw_data")
            t.data_location = TensorProto.EXTERNAL

    def close(self) -> None:
        self.file.close()


def short_initializer_names(model) -> None:
    """Initializers renamed w0, w1, …: `compact_model` keeps them (a standalone file's weights keep their
    layer names), but 26 stitched graphs would each repeat every long name of the shared weights."""
    g = model.graph
    names = {t.name: f"w{i:x}" for i, t in enumerate(g.initializer)}
    for t in g.initializer:
        t.name = names[t.name]
    for n in g.node:
        n.input[:] = [names.get(v, v) for v in n.input]


def _export_graph(module, input_shape, opset: int):
    import onnx
    fd, tmp = tempfile.mkstemp(suffix=".onnx")
    os.close(fd)
    try:
        export_onnx(module, input_shape, tmp, opset=opset)
        return onnx.load(tmp)
    finally:
        os.unlink(tmp)


def _parity(sess, module, x: torch.Tensor, row: dict) -> None:
    """FP32 parity (runtimes.parity thresholds) of an ORT session against the torch configuration."""
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        ref = module(x).numpy()
    m = parity.compare(ref, got)
    bad = parity.failures(m, parity.THRESHOLDS["fp32"])
    if bad:
        raise ParityError(f"config {row['id']} ({row['name']}): ORT disagrees with torch: " + "; ".join(bad))
    row["parity_max_abs"] = max(row.get("parity_max_abs", 0.0), m["max_abs"])


def time_session(sess, x: np.ndarray, warmup: int = 10, iters: int = 50) -> float:
    """Median latency (ms) of one batch through an onnxruntime session."""
    name = sess.get_inputs()[0].name
    for _ in range(warmup):
        sess.run(None, {name: x})
    lat = np.empty(iters)
    for i in range(iters):
        t = time.perf_counter()
        sess.run(None, {name: x})
        lat[i] = time.perf_counter() - t
    return float(np.median(lat) * 1e3)


def export_stitched(model: StitchedModel, out: str | Path, *, rows: list[dict], input_shape: tuple[int, ...],
                    preprocess: dict, labels: list[str], anchors: list[str], parity_inputs: np.ndarray,
                    space: dict, metrics: dict | None = None, latency_iters: int = 50, opset: int = 17,
                    overwrite: bool = False, progress: bool = True, before_commit=None,
                    keep_graphs: str = "frontier") -> dict:
    """Write the artifact to `out`; fills `latency_ms`, parity and `file` into `rows` (one per config)
    and returns the manifest. Every configuration is exported, parity-checked and timed; the artifact
    keeps the graphs of `keep_graphs`: "all", or "frontier" (anchors + the MACs/accuracy Pareto front: the
    others are dominated, and on a family this small each graph costs ~0.3 % of the weights). The choice
    uses MACs, not the measured latency, so what ships does not depend on the machine's load while timing.
    `before_commit(dir, rows)` may add reports (plot, table) to the artifact.
    Raises ParityError (nothing written) when a graph disagrees with torch."""
    from safetensors.torch import save_file
    model.eval()
    one = np.ascontiguousarray(parity_inputs[:1], dtype=np.float32)
    ref_inputs = torch.from_numpy(parity_inputs)
    graphs = {}
    for cid in tqdm(range(model.num_configs), desc="ONNX export + parity + ORT latency", disable=not progress or None):
        graph = _export_graph(ConfigView(model, cid), input_shape, opset)
        sess = cpu_session(graph.SerializeToString())
        _parity(sess, ConfigView(model, cid), ref_inputs, rows[cid])
        rows[cid]["latency_ms"] = round(time_session(sess, one, iters=latency_iters), 4)
        graphs[cid] = graph
    keep = set(range(model.num_configs)) if keep_graphs == "all" else {r["id"] for r in rows if r["is_anchor"] or r["pareto"]}
    with ArtifactWriter(out, overwrite=overwrite) as w:
        (w.dir / GRAPH_DIR).mkdir()
        shared = SharedWeights(w.dir / GRAPH_DIR / WEIGHTS_FILE)
        for cid in sorted(keep):
            compact_model(graphs[cid])   # static shape chains folded (~40 % of the nodes), short names
            shared.externalise(graphs[cid])
            short_initializer_names(graphs[cid])
            rows[cid]["file"] = f"{GRAPH_DIR}/c{cid:03d}.onnx"
            (w.dir / rows[cid]["file"]).write_bytes(graphs[cid].SerializeToString())
        shared.close()
        for cid in range(model.num_configs):
            rows[cid].setdefault("file", None)
            if rows[cid]["file"]:   # the shipped file (external weights, short names) must match torch too
                _parity(cpu_session(w.dir / rows[cid]["file"]), ConfigView(model, cid), ref_inputs, rows[cid])
        if before_commit is not None:
            before_commit(w.dir, rows)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(w.dir / TORCH_FILE))
        (w.dir / INDEX_FILE).write_text(json.dumps(rows, indent=1) + "\n")
        onnx_bytes = (w.dir / GRAPH_DIR / WEIGHTS_FILE).stat().st_size + sum(
            (w.dir / r["file"]).stat().st_size for r in rows if r["file"])
        manifest = {
            "runtime": "stitch", "entry": INDEX_FILE,
            "model": {"name": "+".join(anchors), "source": "stitch", "family": "sn-net",
                      "reload": {"anchors": anchors, **space}},
            "input": {"name": "input", "shape": ["batch", *input_shape[1:]], "dtype": "float32"},
            "output": {"name": "logits", "shape": ["batch", len(labels)], "dtype": "float32"},
            "preprocess": preprocess, "labels": labels, "quant": None,
            "parts": [{"name": "shared weights", "path": f"{GRAPH_DIR}/{WEIGHTS_FILE}", "role": "weights"},
                      *[{"name": r["name"], "path": r["file"], "role": "config"} for r in rows if r["file"]]],
            "configs": [{k: r.get(k) for k in ("id", "name", "file", "macs", "params", "top1", "latency_ms", "parity_max_abs",
                                           "is_anchor", "anchor_name", "pareto")} for r in rows],
            "metrics": {**(metrics or {}), "onnx_bytes": onnx_bytes,
                        "weights_bin_bytes": (w.dir / GRAPH_DIR / WEIGHTS_FILE).stat().st_size,
                        "latency": {"runtime": "onnxruntime", "threads": 1, "batch": 1, "stat": "median",
                                    "iters": latency_iters}},
            "tools": None,
        }
        if "anchors_fp32_bytes" in manifest["metrics"]:
            manifest["metrics"]["onnx_vs_anchors"] = round(onnx_bytes / manifest["metrics"]["anchors_fp32_bytes"], 4)
        manifest["tools"] = {"edgevit": __import__("edgevit").__version__, **tool_versions("torch", "onnx", "onnxruntime")}
        return w.commit(manifest)

