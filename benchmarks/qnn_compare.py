"""edgevit's QNN bundle vs onnxruntime's own QNN flow, both run on the QNN HTP emulator.

For each bundled model, after `edgevit rewrite --target qnn-htp` (static shapes, rank ≤ 4, Gelu op):
  edgevit   quant/ quantises the rewritten model (per-channel symmetric INT weights, static per-tensor
            activations) and runtimes.qnn.bundle carries those codes and scales into the QDQ graph;
  ort-qnn   onnxruntime.quantization.execution_providers.qnn (get_qnn_qdq_config + quantize, its
            defaults: per-tensor uint8 weights) on the same float graph and calibration images.
Both graphs are compiled for HTP with CPU fallback disabled; reported: nodes placed / refused,
top-1 accuracy on labelled Fashion-MNIST test images, top-1 agreement and SQNR against the FP32
torch model and (edgevit) against its torch fake-quant model — the number the export's parity bar
guards. For each image where the emulator's top-1 differs from the fake-quant model's, the row lists
the fake-quant logit margin (top-1 minus top-2) and its percentile among all images' margins, and
whether onnxruntime's CPU EP on the same QDQ graph flips too (then the difference is in the graph's
encodings, not in HTP arithmetic). Accuracy numbers do not depend on machine load; no latency is
reported (emulator times say nothing about a phone). The emulator runs ~0.2-0.4 s per image, so the
CNN gets 256 images (one image = 0.39 %) and the ViT fewer.

  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/qnn_compare.py --out benchmarks/results
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgevit.data import load_data, parse_data_spec  # noqa: E402
from edgevit.models.registry import load_model  # noqa: E402
from edgevit.rewrite import load_target, rewrite_model  # noqa: E402
from runtimes import parity  # noqa: E402
from runtimes.onnx.export import export_onnx  # noqa: E402
from runtimes.qnn.bundle import build_qdq  # noqa: E402
from runtimes.onnx.session import cpu_session  # noqa: E402
from runtimes.qnn.compile import qnn_session  # noqa: E402
from runtimes.qnn.session import htp_placement, quantize_for_qnn  # noqa: E402

ACT = {"w8a16": "uint16", "w8a8": "uint8", "w4a16": "uint16"}


def _run(path: Path, x: np.ndarray, cpu: bool = False) -> np.ndarray:
    if cpu:
        s = cpu_session(path)
    else:
        s = qnn_session(path)
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def flips(fq: np.ndarray, htp: np.ndarray, cpu: np.ndarray) -> list[dict]:
    """Images whose emulator top-1 differs from the fake-quant one, with the fake-quant margin."""
    top2 = np.sort(fq, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    idx = np.nonzero(htp.argmax(1) != fq.argmax(1))[0]
    return [{"image": int(i), "fake_quant_margin": round(float(margin[i]), 4),
             "margin_percentile": round(float((margin < margin[i]).mean() * 100), 1),
             "cpu_ep_flips_too": bool(cpu[i].argmax() != fq[i].argmax())} for i in idx]


def _row(flow, model, precision, path, x, y, fp32, fq=None, build_s=0.0) -> dict:
    p = htp_placement(path)
    t = time.perf_counter()
    out = _run(path, x)
    row = {"model": model, "precision": precision, "flow": flow, "nodes_on_htp": p.on_qnn,
           "refused": len(p.refused), "finalized": p.finalized, "build_s": round(build_s, 1),
           "emulator_s_per_image": round((time.perf_counter() - t) / len(x), 3),
           "top1_pct": round(float((out.argmax(1) == y).mean() * 100), 2),
           "top1_fp32_torch_pct": round(float((fp32.argmax(1) == y).mean() * 100), 2),
           "vs_fp32": parity.compare(fp32, out), "qdq_bytes": path.stat().st_size}
    if fq is not None:
        row["top1_fake_quant_torch_pct"] = round(float((fq.argmax(1) == y).mean() * 100), 2)
        row["vs_fake_quant"] = parity.compare(fq, out)
        sorted_fq = np.sort(fq, axis=1)
        row["fake_quant_margin_median"] = round(float(np.median(sorted_fq[:, -1] - sorted_fq[:, -2])), 4)
        row["flips_vs_fake_quant"] = flips(fq, out, _run(path, x, cpu=True))
    return row


def markdown(result: dict) -> str:
    """The README table: placement, accuracy and SQNR of each flow on the HTP emulator."""
    images = ", ".join(f"{m} {n}" for m, n in result["images"].items())
    lines = [f"QNN HTP emulator (onnxruntime-qnn), Fashion-MNIST test images ({images}), "
             f"{result['calibration_images']} calibration images, after the qnn-htp rewrite. `ort-qnn` = onnxruntime's "
             "own QNN QDQ flow; `fake-quant` = edgevit's torch model of the same quantisation. `extra encodings`: "
             "the tensors between edgevit's quantisers that the QNN recipe rounds too (conv outputs, residual sums, "
             "logits); the fake-quant model rounds them as well when a module produces every one of them "
             "(runtimes/qnn/glue.py), else it keeps edgevit's quantisers only.", "",
             "| model | precision | flow | nodes on HTP / refused | top-1 % | agreement vs FP32 | SQNR vs FP32 dB "
             "| extra encodings in fake-quant | agreement vs fake-quant | SQNR vs fake-quant dB "
             "| flips: fake-quant margin (percentile) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        fq = r.get("vs_fake_quant")
        lines.append(f"| {r['model']} | {r['precision']} | {r['flow']} | {r['nodes_on_htp']} / {r['refused']} | "
                     f"{r['top1_pct']:.2f} | {100 * r['vs_fp32']['top1_agreement']:.2f} % | {r['vs_fp32']['sqnr_db']} | "
                     + (f"{_glue_text(r)} | {100 * fq['top1_agreement']:.2f} % | {fq['sqnr_db']} | {_flip_text(r)} |"
                        if fq else "– | – | – | – |"))
    lines += ["", "Flips: each image where the emulator's top-1 differs from the fake-quant model's, with the "
              "fake-quant logit margin (top-1 − top-2) and its percentile pN among all images; `cpu` = onnxruntime's "
              "CPU EP on the same QDQ graph flips it too (the graph's extra output encodings, not HTP arithmetic)."]
    return "\n".join(lines) + "\n"


def _glue_text(row: dict) -> str:
    g = row["carried"]["other_activations_in_reference"]
    if g["modelled_in_reference"]:
        return f"yes, all {g['recipe_encodings']}"
    return f"no ({g['matched_to_modules']} of {g['recipe_encodings']} made by modules)"


def _flip_text(row: dict) -> str:
    fl = row.get("flips_vs_fake_quant", [])
    if not fl:
        return "none"
    return "; ".join(f"{f['fake_quant_margin']:.3f} (p{f['margin_percentile']:.0f}{', cpu' if f['cpu_ep_flips_too'] else ''})"
                     for f in fl) + f" (median margin {row['fake_quant_margin_median']:.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["vit-tiny", "mobilenet-mini"])
    ap.add_argument("--precisions", nargs="+", default=["w8a16", "w8a8", "w4a16"])
    ap.add_argument("--images", type=int, default=96, help="Test images for ViTs (the emulator is slow).")
    ap.add_argument("--cnn-images", type=int, default=256, help="Test images for CNNs.")
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args()
    torch.set_num_threads(1)
    rows, load0, counts = [], os.getloadavg(), {}
    for name in a.models:
        model, meta = load_model(name)
        counts[name] = a.images if "vit" in meta.family else a.cnn_images
        x, y = load_data(parse_data_spec(f"fashion-mnist:{counts[name]}"), meta.preprocess, split="test", seed=0)
        cal = load_data(parse_data_spec(f"fashion-mnist:{a.calib}"), meta.preprocess, split="train", seed=0)[0]
        npu, _ = rewrite_model(model, load_target("qnn-htp"), x[:32], (1, *meta.input_shape[1:]))
        with torch.no_grad():
            fp32 = npu(x).numpy()
        xn, yn, caln = x.numpy(), y.numpy(), cal.numpy()
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            float_path = export_onnx(npu, (1, *meta.input_shape[1:]), tmp / "float.onnx", dynamic_batch=False)
            for prec in a.precisions:
                t = time.perf_counter()
                (tmp / prec).mkdir()
                ref, info = build_qdq(npu, meta.input_shape, tmp / prec, caln, prec)
                with torch.no_grad():
                    fq = ref(x).numpy()
                rows.append({**_row("edgevit", name, prec, info.qdq_path, xn, yn, fp32, fq, time.perf_counter() - t),
                             "carried": info.summary()})
                print(json.dumps(rows[-1]), flush=True)
                if prec == "w4a16":
                    continue   # onnxruntime's QNN helper offers no int4 weights (uint8/uint16/int8 only)
                t = time.perf_counter()
                ort_path = quantize_for_qnn(float_path, tmp / f"ort-{prec}.onnx", caln, activation_type=ACT[prec])
                rows.append(_row("ort-qnn", name, prec, ort_path, xn, yn, fp32, None, time.perf_counter() - t))
                print(json.dumps(rows[-1]), flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "qnn_compare", "device": "QNN HTP emulated on x86 (onnxruntime-qnn), shared 2-core machine",
              "images": counts, "calibration_images": a.calib, "data": "Fashion-MNIST test (seed 0) / train (seed 0)",
              "loadavg_start": [round(v, 2) for v in load0], "loadavg_end": [round(v, 2) for v in os.getloadavg()],
              "rows": rows}
    (out / "qnn_compare.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "qnn_compare.md").write_text(markdown(result))
    print(f"{'model':15} {'prec':6} {'flow':8} {'on HTP':>7} {'refused':>7} {'top1%':>6} {'agree fp32':>10} "
          f"{'SQNR fp32':>9} {'agree fq':>8} {'SQNR fq':>7}")
    for r in rows:
        fq = r.get("vs_fake_quant")
        fq_agree, fq_sqnr = ("", "") if fq is None else (f"{100 * fq['top1_agreement']:.2f}", fq["sqnr_db"])
        print(f"{r['model']:15} {r['precision']:6} {r['flow']:8} {r['nodes_on_htp']:7d} {r['refused']:7d} "
              f"{r['top1_pct']:6.2f} {100 * r['vs_fp32']['top1_agreement']:10.2f} {r['vs_fp32']['sqnr_db']:>9} "
              f"{fq_agree:>8} {fq_sqnr:>7}")
    print(f"wrote {out / 'qnn_compare.json'}")


if __name__ == "__main__":
    main()
