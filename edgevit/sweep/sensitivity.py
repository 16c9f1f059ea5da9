"""Per-layer sensitivity (`edgevit analyze --workers N`) fanned out over the sweep's Ray executor.

The driver builds and calibrates the quantised model once and puts it, the float model and the data in
Ray's object store; each task measures a shard of the layers with quant.sensitivity.layer_sensitivity
(the serial code, restricted to its layers) in its own process with 1 torch thread. Layers are dealt
round-robin so every shard mixes early (large activations) and late layers. Rows are the serial run's,
bit for bit, when the serial run also uses 1 thread (tests/test_sweep.py checks it).
"""
from __future__ import annotations

import os


def _shard(float_model, qmodel, x, y, leave_one_out: bool, layers: list[str]) -> dict:
    import torch

    from quant.sensitivity import layer_sensitivity
    torch.set_num_threads(1)
    return layer_sensitivity(float_model, qmodel, x, y, leave_one_out=leave_one_out, layers=layers)


def layer_sensitivity_parallel(float_model, qmodel, x, y=None, leave_one_out: bool = True, workers: int | None = None,
                               address: str | None = None, progress=None) -> dict:
    """quant.sensitivity.layer_sensitivity's result, measured by `workers` Ray tasks (local Ray unless `address`)."""
    from quant.modules import quantized_layers
    from edgevit.ray_pool import start_ray
    names = [n for n, _ in quantized_layers(qmodel)]
    workers = max(1, min(workers or os.cpu_count() or 1, len(names)))
    ray, owns = start_ray(address, workers)
    try:
        task = ray.remote(num_cpus=1, max_retries=1)(_shard)
        refs = [ray.put(o) for o in (float_model, qmodel, x, y)]
        pending = [task.remote(*refs, leave_one_out, names[i::workers]) for i in range(workers)]
        parts = []
        bar = progress(total=len(names)) if progress else None
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            part = ray.get(done[0])
            parts.append(part)
            if bar is not None:
                bar.update(len(part["layers"]))
        if bar is not None:
            bar.close()
    finally:
        if owns:
            ray.shutdown()
    rows = {r["layer"]: r for p in parts for r in p["layers"]}
    return {**parts[0], "layers": [rows[n] for n in names], "workers": workers}
