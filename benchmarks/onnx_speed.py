"""ONNX Runtime CPU, batch 1, one thread: speed, size, memory and accuracy of edgevit's low-bit artifacts.

For each model — the bundled trained vit-small and mobilenet-mini (Fashion-MNIST: 256 calibration images
from the train split, top-1 on 1000 test images), MobileNetV2 with its real ImageNet weights, and timm's
deit_tiny_patch16_224 and deit_small_patch16_224 at 224 (random init, the same seeded model in every process);
the 224 models calibrate on 32 photos and use all 63 bundled photos for parity and agreement — quant's PTQ (RTN) at int w8a8, int w4a32 (int4 weights, float activations: INT4
weight-only), fp4 w4a16 (E2M1 weights, weight-only), fp4 w4a6 (E2M3 per-token activations) in its default
form (linears on int8 kernels) and in the float-matmul form, and mxfp4 w4a8 (the first conv float: MX
activation blocks need 32 channels), exported side by side with FP32 and onnxruntime's own quantisers
(`quantize_static`, per-channel QDQ, and `quantize_dynamic`). Latency is measured interleaved in one process
(round-robin blocks, median of rounds) so load on a shared machine hits every variant alike; the load
average is recorded. Peak RSS comes from a fresh process per artifact (runtimes.bench.bench_many). SQNR is
the runtime's logits against the FP32 model's (what quantisation costs); `agree` is runtime vs the torch
model exported (parity). A graph onnxruntime refuses to open on one int8 path is a row with its error.

  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/onnx_speed.py --out benchmarks/results

Every INT8 artifact is timed twice: as edgevit runs it on this CPU (runtimes.onnx.session: onnxruntime's
default u8×s8 kernels where they are exact, i.e. AVX-512 VNNI, else `session.x64quantprecision=1`'s u8×u8
path) and on the other path (`… (exact u8u8 path)` on a VNNI CPU: what exactness would cost; `… (fast u8s8
path)` elsewhere: what it saves, and the accuracy it loses there). The table names this CPU's int8 features.
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
from runtimes.bench import bench_interleaved, bench_many  # noqa: E402
from runtimes.errors import ExportError, ParityError  # noqa: E402
from runtimes.parity import compare  # noqa: E402
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


# (variant, --fmt, --bits, graph form); INT8 rows are also timed on the other int8 path (OTHER)
QUANT_VARIANTS = [("w8a8-exact", "int", "w8a8", "exact"), ("w8a8-integer", "int", "w8a8", "integer"),
                  ("int4-w4a32", "int", "w4a32", "exact"), ("fp4-w4a16", "fp4", "w4a16", "exact"),
                  ("fp4-w4a6", "fp4", "w4a6", "exact"), ("fp4-w4a6-float-matmul", "fp4", "w4a6", "float-matmul"),
                  ("mxfp4-w4a8", "mxfp4", "w4a8", "exact")]
INT8_PATH_VARIANTS = ("w8a8-exact", "w8a8-integer")
REGISTERED = ("vit-small", "mobilenet-mini", "mobilenetv2")   # the rest are timm architectures (random init)
CNNS = ("mobilenet-mini", "mobilenetv2")                       # they get the requantised integer graph form


def _setup(name: str) -> dict:
    """Model, data and export arguments of one benchmark model."""
    model, meta = load_model(name if name in REGISTERED else f"timm:{name}")
    model = model.eval()
    if name in ("vit-small", "mobilenet-mini"):
        xp, yp = (t.numpy() for t in load_data("fashion-mnist:512", PRE, "test", seed=0))
        xe, ye = (t.numpy() for t in load_data("fashion-mnist:1000", PRE, "test", seed=1))
        calib_t = calibration_tensor("fashion-mnist:256", PRE, seed=0)
        kw = dict(input_shape=(1, 1, 28, 28), preprocess=PRE.to_dict(), labels=list(LABELS), parity_inputs=xp,
                  parity_labels=yp, model_info={"name": name})
        return {"model": model, "kw": kw, "xe": xe, "ye": ye, "calib_t": calib_t, "data": "Fashion-MNIST 1000 test",
                "rounds": None, "iters": None}
    x = load_data("photos", meta.preprocess, "test", seed=0)[0]
    calib_t = calibration_tensor("photos:32", meta.preprocess, seed=0)
    kw = dict(input_shape=tuple(meta.input_shape), preprocess=meta.preprocess.to_dict(), labels=list(meta.labels),
              parity_inputs=x.numpy(), model_info={"name": name if name in REGISTERED else f"timm:{name}"},
              parity_data="photos:63")
    return {"model": model, "kw": kw, "xe": x.numpy(), "ye": None, "calib_t": calib_t, "data": "63 photos",
            "rounds": 7, "iters": 20 if name in CNNS else 5}


def _metrics(path: Path, x: np.ndarray, y, ref: np.ndarray | None, fp32: np.ndarray, options: dict | None = None) -> dict:
    """Top-1 (labelled data), logit SQNR against the FP32 model, agreement with the exported torch model."""
    runner = open_runner(path, **(options or {}))
    got = np.concatenate([runner.run(x[i:i + 16]) for i in range(0, len(x), 16)])
    out = {"sqnr_vs_fp32_db": compare(fp32, got)["sqnr_db"]}
    if y is not None:
        out["top1_runtime"] = round(float((got.argmax(1) == y).mean() * 100), 2)
    if ref is not None:
        m = compare(ref, got)
        out["top1_agreement"] = round(100 * m["top1_agreement_decisive"], 2)
        out["agreement_images"] = m["decisive_n"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--models", default="vit-small,mobilenet-mini,mobilenetv2,deit_tiny_patch16_224,deit_small_patch16_224")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--rss-iters", type=int, default=20, help="Runs per fresh-process peak-RSS measurement.")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "edgevit-onnx-speed"),
                    help="Where the compared artifacts are written (not part of the results).")
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out)
    work = Path(a.work)
    results = {"machine": {**machine.describe(), "u8s8_exact": machine.u8s8_exact(), "cpu_count": os.cpu_count(),
                           "platform": platform.platform(), "note": "ratios from interleaved rounds in one process; "
                           "the machine was shared with other jobs", "loadavg": [round(v, 2) for v in os.getloadavg()]},
               "models": {}}
    for name in a.models.split(","):
        st = _setup(name)
        model, kw, xe, ye, calib_t = st["model"], st["kw"], st["xe"], st["ye"], st["calib_t"]
        calib = calib_t.numpy()
        d = work / name
        shutil.rmtree(d, ignore_errors=True)
        rows, refs = {}, {"fp32": None}
        export_onnx_artifact(model, d / "fp32", **kw)
        with torch.no_grad():
            fp32_logits = np.concatenate([model(torch.from_numpy(xe[i:i + 16])).numpy() for i in range(0, len(xe), 16)])
        variants = ["fp32"]
        cnn = name in CNNS
        for v, fam, bits, form in QUANT_VARIANTS:
            if (form == "integer") != (cnn and v == "w8a8-integer") or (cnn and v == "fp4-w4a6-float-matmul"):
                continue   # the requantised integer form is for CNNs; the FP4 int8-matmul form for linears
            # MX activations come in blocks of 32 channels: the first conv's 1- or 3-channel input stays float
            first = next(n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d))
            keep = (first,) if fam.startswith("mx") else ()
            q = quant.quantize_model(model, quant.parse_spec(fam, bits, None, keep), calib_t)
            try:
                export_onnx_artifact(q, d / v, quant_spec=spec_from_model(q), graph_form=form,
                                     calib_inputs=calib if form == "integer" else None, **kw)
            except (ParityError, ExportError) as e:
                rows[v] = {"error": str(e)}
                continue
            with torch.no_grad():
                refs[v] = np.concatenate([q(torch.from_numpy(xe[i:i + 16])).numpy() for i in range(0, len(xe), 16)])
            variants.append(v)
        ort = [f"ort-{kind}" for kind in ("static", "dynamic")]
        for v in ort:
            _ort_reference(d / "fp32", d / v, v.removeprefix("ort-"), calib[:128])
            variants.append(v)
            refs[v] = fp32_logits
        fp32_bytes = load_artifact(d / "fp32").size_bytes
        variants += [v + OTHER for v in variants if v in (*INT8_PATH_VARIANTS, *ort)]
        refs.update({v + OTHER: refs.get(v) for v in list(refs)})
        path = {v: d / v.removesuffix(OTHER) for v in variants}
        for v in list(variants):   # onnxruntime refuses some graphs on some int8 paths: a row, not a crash
            try:
                open_runner(path[v], **_runner_options(v)).run(xe[:1])
            except Exception as e:  # noqa: BLE001 - any runtime refusal is what the row reports
                rows[v] = {"error": f"onnxruntime: {str(e).splitlines()[0][:200]}"}
                variants.remove(v)
        timing = bench_interleaved([str(path[v]) for v in variants], rounds=st["rounds"] or a.rounds,
                                   iters=st["iters"] or a.iters, options=[_runner_options(v) for v in variants])
        base = timing[0]["median_ms"]
        timing = [{**t, "speedup_vs_fp32": round(base / t["median_ms"], 3)} for t in timing]
        plain = [v for v in variants if not v.endswith(OTHER)]
        rss = dict(zip(plain, bench_many([str(path[v]) for v in plain], iters=a.rss_iters, warmup=5)))
        for v, t in zip(variants, timing):
            r = rss.get(v.removesuffix(OTHER), {})
            rows[v] = {**t, "size_vs_fp32": round(t["file_bytes"] / fp32_bytes, 4),
                       "peak_rss_mib": r.get("peak_rss_mib"), "session_rss_mib": r.get("session_rss_mib"),
                       **_metrics(path[v], xe, ye, refs.get(v), fp32_logits, _runner_options(v))}
        results["models"][name] = {"data": st["data"], "rows": rows}
        for v, r in rows.items():
            print(name, v, {k: r.get(k) for k in ("median_ms", "speedup_vs_fp32", "size_vs_fp32", "peak_rss_mib",
                                                 "sqnr_vs_fp32_db", "top1_runtime", "top1_agreement", "error")})
    out.mkdir(parents=True, exist_ok=True)
    (out / "onnx_speed.json").write_text(json.dumps(results, indent=2) + "\n")
    mach = results["machine"]
    lines = ["# ONNX Runtime CPU: low-bit speed, size, memory (batch 1, 1 thread)", "",
             f"CPU: {machine.summary(mach)}; its u8×s8 kernels are "
             f"{'exact (VNNI)' if mach['u8s8_exact'] else 'inexact (no VNNI): edgevit runs the exact u8×u8 path'}. "
             f"Rows ending `{OTHER.strip()}` run the same artifact on the int8 path edgevit does not take on this CPU.",
             "Speed-up: interleaved A/B in one process (median of rounds) on a 2-core machine shared with other jobs "
             "(load average in the JSON): ratios, not absolute times. Peak RSS: a fresh process per artifact (its "
             "imports included; in brackets what opening the session added).",
             "SQNR: runtime logits vs the FP32 model's. `agree`: runtime vs the torch model exported, top-1 on the "
             "images that are not near-ties (runtimes/parity.py). `top-1`: Fashion-MNIST test labels.", "",
             "| model | variant | graph form | speed-up | median ms | size | size/FP32 | peak RSS | SQNR vs FP32 | top-1 | agree |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, entry in results["models"].items():
        for v, r in entry["rows"].items():
            if "error" in r:
                lines.append(f"| {name} | {v} | export refused: {r['error'][:90]} | | | | | | | | |")
                continue
            sq = r["sqnr_vs_fp32_db"]
            sq = "-" if v == "fp32" else ("inf" if sq == "inf" else f"{sq:.1f} dB")
            rss = (f"{r['peak_rss_mib']:.0f} (+{r['session_rss_mib']:.0f}) MiB" if r.get("peak_rss_mib") is not None
                   else "-")
            lines.append(f"| {name} | {v} | {r['graph_form']} | {r['speedup_vs_fp32']:.2f}x | {r['median_ms']:.3f} | "
                         f"{r['file_bytes'] / 1e3:.1f} kB | {r['size_vs_fp32']:.3f} | {rss} | {sq} | "
                         f"{r.get('top1_runtime', '-')} | {r.get('top1_agreement', '-')} |")
    (out / "onnx_speed.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
