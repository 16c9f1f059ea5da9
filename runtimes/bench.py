"""Latency/throughput/memory of artifacts, each measured in its own fresh process.

A separate process per artifact keeps peak RSS honest (one artifact's arena does not inflate the next)
and the order of artifacts from warming caches for each other. `python -m runtimes.bench DIR` is the
worker; `bench_many` runs it per artifact and collects the JSON lines.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def _rss_kib() -> int:
    """Peak resident memory of this process so far, KiB: /proc/self/status VmHWM on Linux.

    Not getrusage's ru_maxrss: Linux carries that across fork and execve, so a fresh worker reported the
    parent's peak (benchmarks/onnx_speed.py showed its own 0.6-1.7 GB for every artifact); VmHWM belongs to
    the address space, which execve replaces."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS


def bench_one(path: str, threads: int = 1, warmup: int = 20, iters: int = 200, batch: int = 1,
              seed: int = 0) -> dict:
    """Time `iters` batch-`batch` runs after `warmup`; the input is seeded Gaussian noise of the artifact's shape."""
    from runtimes.artifact import load_artifact
    from runtimes.runner import open_runner
    art = load_artifact(path)
    rss_before = _rss_kib()
    t0 = time.perf_counter()
    runner = open_runner(art, threads=threads)
    load_s = time.perf_counter() - t0
    shape = [batch if not isinstance(d, int) else d for d in art.manifest["input"]["shape"]]
    if isinstance(art.manifest["input"]["shape"][0], int) and batch != shape[0]:
        raise ValueError(f"{path} has a static batch of {shape[0]}; bench it with --batch {shape[0]}")
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    for _ in range(warmup):
        runner.run(x)
    lat = np.empty(iters)
    start = time.perf_counter()
    for i in range(iters):
        t = time.perf_counter()
        runner.run(x)
        lat[i] = time.perf_counter() - t
    wall = time.perf_counter() - start
    p50, p90, p99 = np.percentile(lat * 1e3, [50, 90, 99])
    return {"artifact": str(path), "runtime": art.runtime, "precision": art.precision(),
            "graph_form": (art.manifest.get("quant") or {}).get("graph_form", "float"),
            "threads": threads, "batch": batch, "warmup": warmup, "iters": iters,
            "p50_ms": round(float(p50), 4), "p90_ms": round(float(p90), 4), "p99_ms": round(float(p99), 4),
            "mean_ms": round(float(lat.mean() * 1e3), 4), "throughput_ips": round(iters * batch / wall, 2),
            "load_s": round(load_s, 4), "peak_rss_mib": round(_rss_kib() / 1024, 2),
            "session_rss_mib": round((_rss_kib() - rss_before) / 1024, 2),
            "file_bytes": art.size_bytes}


def bench_interleaved(paths: list[str], threads: int = 1, rounds: int = 15, iters: int = 50, warmup: int = 20,
                      seed: int = 0, options: list[dict] | None = None) -> list[dict]:
    """A/B latency of several artifacts in one process: round-robin blocks of `iters` runs, median of rounds.

    On a shared machine, background load drifts over seconds; alternating short blocks exposes every
    artifact to the same load, so the *ratios* are fair even when absolute times are not. Reports the
    median over rounds of each block's median latency, and the load average at start and end.
    `options[i]` are extra runner options for `paths[i]` (e.g. `{"exact_int8": True}` to time onnxruntime's
    exact x86 int8 path on a CPU that does not need it); a path may appear twice with different ones.
    """
    from runtimes.artifact import load_artifact
    from runtimes.runner import open_runner
    arts = [load_artifact(p) for p in paths]
    runners = [open_runner(a, threads=threads, **o) for a, o in zip(arts, options or [{}] * len(arts))]
    shapes = [[1 if not isinstance(d, int) else d for d in a.manifest["input"]["shape"]] for a in arts]
    xs = [np.random.default_rng(seed).standard_normal(s).astype(np.float32) for s in shapes]
    for r, x in zip(runners, xs):
        for _ in range(warmup):
            r.run(x)
    load0 = os.getloadavg()
    blocks = np.empty((len(runners), rounds))
    lat = np.empty(iters)
    for k in range(rounds):
        for j, (r, x) in enumerate(zip(runners, xs)):
            for i in range(iters):
                t = time.perf_counter()
                r.run(x)
                lat[i] = time.perf_counter() - t
            blocks[j, k] = np.median(lat)
    load1 = os.getloadavg()
    return [{"artifact": str(p), "precision": a.precision(),
             "graph_form": (a.manifest.get("quant") or {}).get("graph_form", "float"),
             "median_ms": round(float(np.median(b) * 1e3), 4),
             "rounds_ms_min_max": [round(float(b.min() * 1e3), 4), round(float(b.max() * 1e3), 4)],
             "threads": threads, "rounds": rounds, "iters_per_round": iters, "file_bytes": a.size_bytes,
             "loadavg_start": [round(v, 2) for v in load0], "loadavg_end": [round(v, 2) for v in load1],
             **({"runner_options": o} if o else {})}
            for p, a, b, o in zip(paths, arts, blocks, options or [{}] * len(arts))]


def bench_many(paths: list[str], threads: int = 1, warmup: int = 20, iters: int = 200, batch: int = 1,
               progress=None) -> list[dict]:
    """Run `bench_one` for each artifact in a fresh interpreter, one after the other."""
    rows = []
    for p in paths:
        if progress:
            progress(p)
        cmd = [sys.executable, "-m", "runtimes.bench", str(p), "--threads", str(threads), "--warmup", str(warmup),
               "--iters", str(iters), "--batch", str(batch)]
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {**os.environ, "OMP_NUM_THREADS": str(threads),
               "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if res.returncode != 0:
            raise RuntimeError(f"benchmarking {p} failed: {(res.stderr.strip().splitlines() or ['?'])[-1]}")
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return rows


def _main() -> None:
    ap = argparse.ArgumentParser(description="Benchmark one artifact (worker for bench_many).")
    ap.add_argument("artifact")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--batch", type=int, default=1)
    a = ap.parse_args()
    print(json.dumps(bench_one(a.artifact, a.threads, a.warmup, a.iters, a.batch)))


if __name__ == "__main__":
    _main()
