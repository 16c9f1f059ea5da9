"""ONNX Runtime CPU, batch 1, one thread: INT8 speed-up, W4 size and accuracy of edgevit's graph forms.

For each bundled trained model: quant's PTQ (RTN, 256 calibration images from the train split) at
int w8a8 and fp4 w4a6, exported as artifacts side by side with FP32 and onnxruntime's own quantiser
(static QDQ for the CNN, dynamic for the ViT) as references. Latency is measured interleaved in one
process (round-robin blocks, median of rounds) so load on a shared machine hits every variant alike;
the load average is recorded. Top-1 is on 1000 real test images, runtime vs the torch model exported.

  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/onnx_speed.py --out benchmarks/results

Every INT8 artifact is timed twice: as edgevit runs it on this CPU (runtimes.onnx.session: onnxruntime's
default u8×s8 kernels where they are exact, i.e. AVX-512 VNNI, else `session.x64quantprecision=1`'s u8×u8
path) and on the other path (`… (exact u8u8 path)` on a VNNI CPU: what exactness would cost; `… (fast u8s8
path)` elsewhere: what it saves, and the accuracy it loses there). The table names this CPU's int8 features.

`--sizes-only` re-exports and re-measures size and top-1 but takes the latency columns from the results
already in --out (for a shared machine, where new timings would be distorted); the tables say so.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import quant  # noqa: E402
from edgevit.data import calibration_tensor, load_data  # noqa: E402
from edgevit.models.bundled import FASHION_MNIST_PREPROCESS as PRE, LABELS  # noqa: E402
from edgevit.models.registry import load_model  # noqa: E402
from runtimes.artifact import ArtifactWriter, load_artifact  # noqa: E402
from runtimes.bench import bench_interleaved  # noqa: E402
from runtimes.errors import ParityError  # noqa: E402
from runtimes.onnx.artifact import export_onnx_artifact  # noqa: E402
from runtimes.onnx.quantspec import spec_from_model  # noqa: E402
from runtimes.runner import open_runner  # noqa: E402
from runtimes import machine  # noqa: E402

# The same artifact on the int8 path edgevit does not take on this CPU (runtimes.onnx.session).
OTHER = " (exact u8u8 path)" if machine.u8s8_exact() else " (fast u8s8 path)"


def _runner_options(variant: str) -> dict:
    return {"exact_int8": machine.u8s8_exact()} if variant.endswith(OTHER) else {}


def _ort_reference(fp32_dir: Path, out: Path, kind: str, calib: np.ndarray) -> None:
    """onnxruntime.quantization applied to the FP32 artifact (the comparison users would make)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
    art = load_artifact(fp32_dir)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    with ArtifactWriter(out, overwrite=True) as w:
        if kind == "static":
            quantize_static(str(art.entry), str(w.dir / "model.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        else:
            quantize_dynamic(str(art.entry), str(w.dir / "model.onnx"), weight_type=QuantType.QInt8, per_channel=True)
        m = {k: v for k, v in art.manifest.items() if k not in ("files", "format_version")}
        w.commit({**m, "quant": {"precision": "w8a8", "graph_form": f"ort-quantize_{kind}"},
                  "parity": {"thresholds": {"top1_agreement": 0.99}}})


def _top1(path: Path, x: np.ndarray, y: np.ndarray, ref: np.ndarray | None, options: dict | None = None) -> dict:
    got = open_runner(path, **(options or {})).run(x)
    out = {"top1_runtime": round(float((got.argmax(1) == y).mean() * 100), 2)}
    if ref is not None:
        out["top1_torch"] = round(float((ref.argmax(1) == y).mean() * 100), 2)
        out["top1_agreement"] = round(float((got.argmax(1) == ref.argmax(1)).mean() * 100), 2)
    return out


def _earlier_timing(previous: dict, model: str, variant: str, art) -> dict:
    """The timing fields of `variant` from the previous results, with this run's graph form and file size."""
    old = previous["models"].get(model, {}).get(variant, {})
    keep = ("median_ms", "rounds_ms_min_max", "threads", "rounds", "iters_per_round", "loadavg_start",
            "loadavg_end", "speedup_vs_fp32")
    return {"artifact": str(art.root), "precision": art.precision(),
            "graph_form": (art.manifest.get("quant") or {}).get("graph_form", "float"),
            **{k: old[k] for k in keep if k in old}, "file_bytes": art.size_bytes, "timing_from_previous_run": True}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--models", default="vit-small,mobilenet-mini")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "edgevit-onnx-speed"),
                    help="Where the compared artifacts are written (not part of the results).")
    ap.add_argument("--sizes-only", action="store_true",
                    help="Skip timing; keep the latency columns of the existing results in --out.")
    a = ap.parse_args()
    previous = json.loads((Path(a.out) / "onnx_speed.json").read_text()) if a.sizes_only else None
    torch.set_num_threads(1)
    out = Path(a.out)
    work = Path(a.work)
    xp, yp = (t.numpy() for t in load_data("fashion-mnist:512", PRE, "test", seed=0))
    xe, ye = (t.numpy() for t in load_data("fashion-mnist:1000", PRE, "test", seed=1))
    calib_t = calibration_tensor("fashion-mnist:256", PRE, seed=0)
    calib = calib_t.numpy()
    results = {"machine": {**machine.describe(), "u8s8_exact": machine.u8s8_exact(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                           "note": "ratios from interleaved rounds in one process", "loadavg": [round(v, 2) for v in os.getloadavg()]},
               "models": {}}
    for name in a.models.split(","):
        model = load_model(name)[0].eval()
        d = work / name
        shutil.rmtree(d, ignore_errors=True)
        kw = dict(input_shape=(1, 1, 28, 28), preprocess=PRE.to_dict(), labels=list(LABELS), parity_inputs=xp,
                  parity_labels=yp, model_info={"name": name})
        rows, refs = {}, {"fp32": None}
        export_onnx_artifact(model, d / "fp32", **kw)
        q8 = quant.quantize_model(model, quant.parse_spec("int", "w8a8", None, ()), calib_t)
        export_onnx_artifact(q8, d / "w8a8-exact", quant_spec=spec_from_model(q8), **kw)
        variants = ["fp32", "w8a8-exact"]
        if name == "mobilenet-mini":
            try:
                export_onnx_artifact(q8, d / "w8a8-integer", quant_spec=spec_from_model(q8), graph_form="integer",
                                     calib_inputs=calib, **kw)
                variants.append("w8a8-integer")
            except ParityError as e:
                rows["w8a8-integer"] = {"error": str(e)}
        ort_kind = "static" if name == "mobilenet-mini" else "dynamic"
        _ort_reference(d / "fp32", d / f"ort-{ort_kind}", ort_kind, calib[:128])
        variants.append(f"ort-{ort_kind}")
        with torch.no_grad():
            refs.update({v: q8(torch.from_numpy(xe)).numpy() for v in variants if v.startswith("w8a8")})
            refs[f"ort-{ort_kind}"] = model(torch.from_numpy(xe)).numpy()
        q4 = quant.quantize_model(model, quant.parse_spec("fp4", "w4a6", None, ()), calib_t)
        try:
            export_onnx_artifact(q4, d / "w4a6-fp4", quant_spec=spec_from_model(q4), **kw)
            with torch.no_grad():
                refs["w4a6-fp4"] = q4(torch.from_numpy(xe)).numpy()
            sized = ["w4a6-fp4"]
        except ParityError as e:
            rows["w4a6-fp4"] = {"error": str(e)}
            sized = []
        fp32_bytes = load_artifact(d / "fp32").size_bytes
        variants += [v + OTHER for v in variants if v != "fp32"]
        refs.update({v + OTHER: refs.get(v) for v in variants if not v.endswith(OTHER)})
        path = {v: d / v.removesuffix(OTHER) for v in variants}
        if previous is None:
            timing = bench_interleaved([str(path[v]) for v in variants], rounds=a.rounds, iters=a.iters,
                                       options=[_runner_options(v) for v in variants])
            base = timing[0]["median_ms"]
            timing = [{**t, "speedup_vs_fp32": round(base / t["median_ms"], 3)} for t in timing]
        else:   # latency from the earlier timed run; size from the artifacts just written
            timing = [_earlier_timing(previous, name, v, load_artifact(path[v])) for v in variants]
        for v, t in zip(variants, timing):
            rows[v] = {**t, "size_vs_fp32": round(t["file_bytes"] / fp32_bytes, 4),
                       **_top1(path[v], xe, ye, refs.get(v), _runner_options(v))}
        for v in sized:
            art = load_artifact(d / v)
            rows[v] = {"precision": art.precision(), "graph_form": art.manifest["quant"]["graph_form"],
                       "file_bytes": art.size_bytes, "size_vs_fp32": round(art.size_bytes / fp32_bytes, 4),
                       **_top1(d / v, xe, ye, refs[v])}
        results["models"][name] = rows
        for v, r in rows.items():
            print(name, v, {k: r.get(k) for k in ("median_ms", "speedup_vs_fp32", "size_vs_fp32", "top1_runtime",
                                                 "top1_torch", "error")})
    if previous is not None:
        results["machine"]["timing"] = ("latency columns copied from the previous timed run (loadavg there); sizes "
                                        "and top-1 from this run")
    out.mkdir(parents=True, exist_ok=True)
    (out / "onnx_speed.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# ONNX Runtime CPU: INT8 speed, W4 size (batch 1, 1 thread)", "",
             f"CPU: {machine.summary(results['machine'])}; its u8×s8 kernels are "
             f"{'exact (VNNI)' if results['machine']['u8s8_exact'] else 'inexact (no VNNI): edgevit runs the exact u8×u8 path'}. "
             f"Rows ending `{OTHER.strip()}` run the same artifact on the path edgevit does not take on this CPU.",
             "Interleaved A/B in one process (median of rounds); 2-core machine; load average in the JSON."
             + (" Latency from the previous timed run; sizes and top-1 re-measured." if previous is not None else ""),
             "Top-1 on 1000 Fashion-MNIST test images; `torch` is the model that was exported (fake-quant); "
             "`agree` is runtime-vs-torch top-1 agreement.", "",
             "| model | variant | graph form | median ms | speed-up | size | size/FP32 | top-1 runtime | top-1 torch | agree |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, rows in results["models"].items():
        for v, r in rows.items():
            if "error" in r:
                lines.append(f"| {name} | {v} | export refused: {r['error'][:90]} | | | | | | | |")
                continue
            ms = f"{r['median_ms']:.3f}" if "median_ms" in r else "-"
            sp = f"{r['speedup_vs_fp32']:.2f}x" if "speedup_vs_fp32" in r else "-"
            lines.append(f"| {name} | {v} | {r['graph_form']} | {ms} | {sp} | {r['file_bytes'] / 1e3:.1f} kB | "
                         f"{r['size_vs_fp32']:.4f} | {r['top1_runtime']:.2f} | {r.get('top1_torch', '-')} | "
                         f"{r.get('top1_agreement', '-')} |")
    (out / "onnx_speed.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
