"""Run a grid's cells as Ray tasks: N in flight, each in its own worker process with 1 torch thread.

The driver schedules, so it alone decides what a failure means: a cell that raises is a result (failed,
its error); a worker that dies under a cell (killed, out of memory, its node gone) gets the cell once
more, then the cell is failed with Ray's reason. Every finished cell is on disk before the next is
scheduled, so Ctrl-C (which stops scheduling and cancels what runs) and crashes lose only running cells,
and a re-run does only what is missing. Without `address`, a small local Ray instance is started (no
dashboard, logs kept off the terminal) and shut down again; with one, cells go to that cluster.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from edgevit.errors import UsageError
from edgevit.ray_pool import require_ray, start_ray
from edgevit.sweep.cell import run_cell
from edgevit.sweep.grid import Grid, load_grid, run_order
from edgevit.sweep.results import MARKER, pyplot, read_cells, write_cell, write_results

ATTEMPTS = 2            # a cell whose worker dies is tried once more
PLOT_EVERY_S = 5.0


def prepare_out(out: Path, overwrite: bool) -> None:
    """A new directory, or one an earlier sweep wrote (resumed); anything else is kept unless overwrite."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a directory")
    if out.is_dir() and any(out.iterdir()):
        if overwrite:
            shutil.rmtree(out)
        elif not (out / MARKER).exists() and not (out / "cells").is_dir():
            raise UsageError(f"--out {out} is not empty and holds no sweep; choose another directory or --overwrite")
    out.mkdir(parents=True, exist_ok=True)


def _row(cell, result: dict | None = None, status: str | None = None) -> dict:
    s = cell.spec
    fmt, bits = s["precision"].split(":")
    row = {"key": cell.key, "model": s["model"], "tool": s["tool"], "method": s["method"],
           "precision": s["precision"], "fmt": fmt, "bits": bits, "model_sha256": cell.model_sha256,
           "spec": s}
    if cell.na:
        row |= {"status": "n/a", "na": cell.na}
    return row | (result or {}) | ({"status": status} if status else {})


def sweep(grid, out, address: str | None = None, workers: int | None = None, progress: bool = True,
          overwrite: bool = False) -> dict:
    """Run `grid` (a YAML path, a mapping or a loaded Grid) into `out`; returns what sweep.json holds.

    `address`: None starts a local Ray instance with `workers` CPUs (default: this machine's); "auto" or
    HOST:PORT joins a running cluster (`workers` then caps the cells in flight). Finished cells found
    in `out` are not run again."""
    g = grid if isinstance(grid, Grid) else load_grid(grid)
    if workers is not None and workers < 1:
        raise UsageError("--workers must be at least 1")
    if importlib.util.find_spec("ray") is None:
        require_ray()   # the one-line install hint, before anything is written
    out = Path(out)
    prepare_out(out, overwrite)
    done = {k: r for k, r in read_cells(out).items() if r.get("status") == "ok"}
    todo = run_order([c for c in g.cells if c.key not in done and not c.na])   # longest first
    rows = {c.key: done.get(c.key) or _row(c) for c in g.cells}
    info = {"name": g.name, "grid": g.source, "models": g.models, "address": address, "workers": None,
            "driver_host": socket.gethostname(), "cells_total": len(g.cells), "cells_reused": len(done),
            "cells_run": 0, "ray_nodes": {}}

    def save(plot: bool = True) -> None:
        info["cells_failed"] = sum(r.get("status") == "failed" for r in rows.values())
        with deferred_signals():
            write_results(out, [rows[c.key] for c in g.cells], info, plot=plot)

    if not todo:
        info["wall_s"] = 0.0
        save()
        return {**info, "cells": [rows[c.key] for c in g.cells]}
    pyplot()   # imported now, so a Ctrl-C cannot land inside the import later
    ray, owns = start_ray(address, workers or os.cpu_count() or 1)
    t_start, interrupted = time.perf_counter(), False
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        info["workers"] = workers or max(1, cpus)
        info["ray_nodes"] = {n["NodeID"]: {"host": n.get("NodeManagerHostname"), "address": n.get("NodeManagerAddress"),
                                           "cpus": n.get("Resources", {}).get("CPU")}
                             for n in ray.nodes() if n.get("Alive")}
        _schedule(ray, todo, rows, info, save, progress, out)
    except BaseException:
        interrupted = True
        raise
    finally:
        info["wall_s"] = time.perf_counter() - t_start
        info["interrupted"] = interrupted
        save(plot=not interrupted)   # the tables of what finished; the plot waits for a run that ends
        if owns:
            ray.shutdown()
    return {**info, "cells": [rows[c.key] for c in g.cells]}


@contextmanager
def deferred_signals():
    """Hold Ctrl-C / SIGTERM until the block ends, then deliver it: the results tables and the plot are
    written whole, and an interrupt cannot land inside a library's lazy import (matplotlib's first savefig
    imports Pillow; an interrupted C-extension import surfaces as "ImportError: initialization failed",
    exit 1 instead of 130). Outside the main thread (where handlers cannot be set) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    old = {s: signal.signal(s, lambda signum, _frame: held.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if held:
            signal.raise_signal(held[0])


def _crash_reason(e: Exception) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}"[:300]


def _schedule(ray, todo, rows, info, save, progress, out) -> None:
    from tqdm import tqdm
    task = ray.remote(num_cpus=1, max_retries=0)(run_cell)
    queue = [(c, 1) for c in todo]
    inflight: dict = {}
    limit = info["workers"]
    last_plot = 0.0
    bar = tqdm(total=len(todo), desc="sweep", unit="cell", disable=None if progress else True, dynamic_ncols=True)
    try:
        while queue or inflight:
            while queue and len(inflight) < limit:
                cell, attempt = queue.pop(0)
                inflight[task.remote(cell.spec, cell.model_sha256, attempt)] = (cell, attempt)
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            for ref in ready:
                cell, attempt = inflight.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as e:   # raised outside run_cell's own guard
                    result = {"status": "failed", "error": _crash_reason(e.cause or e), "attempts": attempt}
                except Exception as e:  # noqa: BLE001 — the worker or its node died under the cell
                    if attempt < ATTEMPTS:
                        queue.insert(0, (cell, attempt + 1))
                        bar.write(f"worker died under {cell.label()} ({type(e).__name__}); retrying")
                        continue
                    result = {"status": "failed", "attempts": attempt,
                              "error": f"worker died {attempt} times; last: {_crash_reason(e)}"}
                row = _row(cell, result)
                rows[cell.key] = row
                write_cell(out, row)
                info["cells_run"] += 1
                now = time.perf_counter()
                save(plot=now - last_plot > PLOT_EVERY_S)
                last_plot = now if now - last_plot > PLOT_EVERY_S else last_plot
                bar.update(1)
                bar.set_postfix_str(f"{cell.label()}: {row['status']}", refresh=False)
    except BaseException:   # Ctrl-C / SIGTERM: stop scheduling, cancel what runs, keep what finished
        for ref in inflight:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 — already finished or gone
                pass
        raise
    finally:
        bar.close()
