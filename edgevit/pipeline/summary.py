"""The final table: every artifact run here on the same images, with latency p50 measured interleaved.

Latency rounds alternate between the torch reference and every artifact (one batch-1 call each per
round), so machine load hits all of them alike; the load average is recorded with the numbers.
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch


def _runner(path: str):
    from runtimes.artifact import load_artifact
    art = load_artifact(path)
    if art.runtime == "tflite":
        from runtimes.tflite.runner import TfliteRunner
        return art, TfliteRunner(art, threads=1)
    from runtimes.runner import open_runner
    return art, open_runner(art, threads=1)


def _top1(logits: np.ndarray, y) -> float | None:
    return None if y is None else float((logits.argmax(-1) == y).mean() * 100)


def measure(state, eval_data: str, iters: int, seed: int = 0, progress=None) -> dict:
    """Top-1 on `eval_data` (test split) and batch-1 latency p50 for the torch models and each artifact."""
    from edgevit.data import load_data
    from edgevit.report.metrics import fp32_size_bytes
    x, y = load_data(eval_data, state.meta.preprocess, split="test", seed=seed)
    xn, yn = x.numpy(), (y.numpy() if y is not None else None)
    subjects = []       # (row, callable on a batch-1 numpy input)

    def torch_call(m):
        m.eval()
        return lambda a: m(torch.from_numpy(a)).numpy()

    with torch.no_grad():
        refs = [("torch", "fp32", state.float_model)]
        if state.qmodel is not None:
            refs.append(("torch (fake-quant)", state.quant["bits"], state.qmodel))
        for name, prec, m in refs:
            logits = torch.cat([m(x[i:i + 500]) for i in range(0, len(x), 500)]).numpy()
            subjects.append(({"runtime": name, "precision": prec, "path": "-", "size_bytes": fp32_size_bytes(m)
                              if prec == "fp32" else None, "top1": _top1(logits, yn)}, torch_call(m)))
        for a in state.artifacts:
            art, runner = _runner(a["path"])
            static = isinstance(art.manifest["input"]["shape"][0], int)
            bs = int(art.manifest["input"]["shape"][0]) if static else 500
            logits = np.concatenate([runner.run(xn[i:i + bs]) for i in range(0, len(xn), bs)])
            subjects.append(({**a, "top1": _top1(logits, yn)}, runner.run))
        sample = xn[:1]
        for _, call in subjects:           # warm-up
            for _ in range(5):
                call(sample)
        lat = np.empty((len(subjects), iters))
        for r in range(iters):
            for k, (_, call) in enumerate(subjects):
                t = time.perf_counter()
                call(sample)
                lat[k, r] = time.perf_counter() - t
            if progress:
                progress(r + 1, iters)
    rows = []
    for k, (row, _) in enumerate(subjects):
        rows.append({**row, "latency_p50_ms": float(np.median(lat[k]) * 1e3)})
    return {"eval_data": eval_data, "eval_images": len(x), "latency": {"batch": 1, "threads": 1, "rounds": iters,
            "interleaved": True, "loadavg": list(os.getloadavg()), "torch_threads": torch.get_num_threads()},
            "rows": rows}
