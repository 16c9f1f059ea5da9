"""`edgevit sweep` on Ray: the same grid with 1 and 2 workers (identical tables, wall time), and on a
two-node cluster over loopback (a `ray start --head` and a second `ray start --address` node on 127.0.0.1,
each with its own CPU and a custom resource), with every cell's node recorded.

    python benchmarks/sweep_bench.py workers  [--grid benchmarks/grids/sweep_small.yaml]  # → results/sweep_workers.{json,md}
    python benchmarks/sweep_bench.py two-node [--grid …] [--port 6391]                    # → results/sweep_two_node.{json,md}
    python benchmarks/sweep_bench.py ptq-compare-check [--models mobilenet-mini]           # → results/sweep_ptq_compare_check.{json,md}
    python benchmarks/sweep_bench.py ptq-compare-workers [--models mobilenetv2]            # → results/sweep_workers_ptq_compare*.{json,md}

`ptq-compare-check` runs the RTN and peer cells of benchmarks/grids/ptq_compare.yaml as a sweep and compares
every row with the published benchmarks/results/ptq_compare.json (made by the script before it became a grid).
`ptq-compare-workers` runs a model's whole ptq_compare grid (reconstruction and GPTQ cells too) with 1 and 2
workers, and checks every row of it against the same published file (about 2 hours for MobileNetV2).

The Ray nodes of `two-node` run `ray start --block` as children of this script and are stopped by
signalling those children only (never `ray stop`, which would end every Ray on the machine).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
METRICS = ("top1", "agreement", "sqnr_db", "size_bytes")


def table(res: dict) -> dict:
    return {c["key"]: tuple(c.get(k) for k in METRICS) for c in res["cells"]}


def run(grid: str, out: Path, **kw) -> tuple[dict, float]:
    from edgevit.sweep import sweep
    t0 = time.perf_counter()
    res = sweep(grid, out, progress=False, **kw)
    return res, time.perf_counter() - t0


def workers_bench(args) -> None:
    _workers(args.grid, str(args.grid), "sweep_workers")


def ptq_compare_workers(args) -> None:
    """The ptq_compare grid of `--models` (all methods, peers too) with 1 and 2 workers, and every row of
    the 2-worker run against the published ptq_compare.json."""
    pc = _ptq_compare_module()
    grid = _ptq_compare_grid(pc, args.models)
    res2 = _workers(grid, f"{pc.GRID.relative_to(ROOT)}` narrowed to `{', '.join(args.models)}",
                    "sweep_workers_ptq_compare")
    _check_against_published(pc, res2, args.models, "sweep_workers_ptq_compare_rows", "all cells")


def _workers(grid, grid_name: str, stem: str) -> dict:
    runs = {}
    with tempfile.TemporaryDirectory() as d:
        for n in (2, 1):   # 2 first: its table is the one checked against published numbers
            load0 = os.getloadavg()
            res, total = run(grid, Path(d) / f"w{n}", workers=n)
            assert res["cells_failed"] == 0, [c.get("error") for c in res["cells"] if c.get("status") == "failed"]
            runs[n] = {"res": res, "total_s": total, "loadavg_start": load0, "loadavg_end": os.getloadavg()}
            print(f"{n} worker(s): {res['wall_s']:.1f} s of scheduling ({total:.1f} s with Ray start), "
                  f"loadavg {load0[0]:.1f} → {os.getloadavg()[0]:.1f}", flush=True)
    identical = table(runs[1]["res"]) == table(runs[2]["res"])
    speedup = runs[1]["res"]["wall_s"] / runs[2]["res"]["wall_s"]
    longest = max(c.get("wall_s") or 0 for c in runs[1]["res"]["cells"])
    summary = {"benchmark": stem, "grid": grid_name, "cells": len(runs[1]["res"]["cells"]),
               "identical_tables": identical, "speedup_2_vs_1": speedup, "cpus": os.cpu_count(),
               "machine": platform.machine(), "longest_cell_s": longest,
               "note": "2-core machine; the load average at start and end shows any other job that shared it",
               "runs": {n: {"wall_s": r["res"]["wall_s"], "total_s": r["total_s"], "loadavg_start": r["loadavg_start"],
                            "loadavg_end": r["loadavg_end"], "cell_wall_s": sum(c.get("wall_s") or 0 for c in r["res"]["cells"]),
                            "cell_cpu_s": sum(c.get("cpu_s") or 0 for c in r["res"]["cells"]),
                            "pids": sorted({c["pid"] for c in r["res"]["cells"] if c.get("pid")})}
                        for n, r in runs.items()},
               "cells_table": [{k: c.get(k) for k in ("model", "tool", "method", "precision", "wall_s", *METRICS)}
                               for c in runs[2]["res"]["cells"]]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(summary, indent=2) + "\n")
    r1, r2 = summary["runs"][1], summary["runs"][2]
    md = ["# `edgevit sweep`: 1 vs 2 workers", "",
          f"Grid `{grid_name}` ({summary['cells']} cells), local Ray, 1 torch thread per cell, {os.cpu_count()} CPUs; "
          f"cells queued longest first (`edgevit.sweep.grid.run_order`), the longest took {longest:.0f} s.",
          f"{summary['note']}.", "",
          "| workers | sweep wall s | with Ray start s | Σ cell wall s | Σ cell CPU s | worker processes | loadavg start → end |",
          "|---|---|---|---|---|---|---|",
          *(f"| {n} | {r['wall_s']:.1f} | {r['total_s']:.1f} | {r['cell_wall_s']:.1f} | {r['cell_cpu_s']:.1f} | {len(r['pids'])} | "
            f"{r['loadavg_start'][0]:.1f} → {r['loadavg_end'][0]:.1f} |" for n, r in ((1, r1), (2, r2))), "",
          f"Speed-up with 2 workers: **{speedup:.2f}×**; tables identical (top-1, agreement, SQNR, size of every "
          f"cell): **{'yes' if identical else 'NO'}**. A cell's CPU time well below its wall time means its worker "
          "waited for a core that other jobs held.", ""]
    (RESULTS / f"{stem}.md").write_text("\n".join(md))
    print("\n".join(md))
    return runs[2]["res"]


def _ray_node(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--block", *args], env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to our own `ray start --block` child: it ends the node processes it started."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)   # its own session: only this node's processes
            proc.wait(10)


def _forget_address(port: int) -> None:
    """`ray start --head` records its address in /tmp/ray/ray_current_cluster for later `ray.init()` calls
    to join; `ray stop` removes it, signalling our node does not. Remove it when it still names our head."""
    f = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    try:
        if f.read_text().strip().endswith(f":{port}"):
            f.unlink()
    except OSError:
        pass


def two_node_bench(args) -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "token")   # `ray start` clusters require the token in ~/.ray/auth_token
    import ray
    addr = f"127.0.0.1:{args.port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--object-store-memory=100000000", "--disable-usage-stats"]
    logs = Path(tempfile.mkdtemp(prefix="edgevit-two-node-"))
    head = _ray_node(["--head", f"--port={args.port}", "--include-dashboard=false", '--resources={"sweep-head": 1}',
                      *common], logs / "head.log", env)
    second = None
    try:
        deadline = time.monotonic() + 120
        while True:   # the head answers once its GCS is up
            try:
                ray.init(address=addr, log_to_driver=False, logging_level="ERROR")
                break
            except Exception:  # noqa: BLE001 — not up yet
                if time.monotonic() > deadline or head.poll() is not None:
                    raise SystemExit(f"the Ray head did not start; see {logs / 'head.log'}")
                time.sleep(1)
        second = _ray_node([f"--address={addr}", '--resources={"sweep-node2": 1}', "--dashboard-agent-listen-port=0",
                            *common], logs / "node2.log", env)
        while sum(n["Alive"] for n in ray.nodes()) < 2:
            if time.monotonic() > deadline or second.poll() is not None:
                raise SystemExit(f"the second Ray node did not join; see {logs / 'node2.log'}")
            time.sleep(1)
        nodes = {n["NodeID"]: ("head" if n["Resources"].get("sweep-head") else "node2")
                 for n in ray.nodes() if n["Alive"]}
        with tempfile.TemporaryDirectory() as d:
            res, total = run(args.grid, Path(d) / "two-node", address=addr, workers=2)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for p in (second, head):
            if p is not None:
                _stop(p)
        _forget_address(args.port)
    per_node = {name: sum(c.get("node_id") == nid for c in res["cells"]) for nid, name in nodes.items()}
    local = RESULTS / "sweep_workers.json"   # the same grid on one local node, if measured
    same = None
    if local.exists() and json.loads(local.read_text())["grid"] == str(args.grid):
        ref = json.loads(local.read_text())["cells_table"]
        same = [tuple(r[k] for k in METRICS) for r in ref] == [tuple(c.get(k) for k in METRICS) for c in res["cells"]]
    summary = {"benchmark": "sweep_two_node", "grid": str(args.grid), "address": addr, "nodes": nodes,
               "cells_per_node": per_node, "identical_to_local_run": same, "cells_failed": res["cells_failed"], "wall_s": res["wall_s"],
               "total_s": total, "loadavg_end": os.getloadavg(),
               "note": "two Ray nodes (1 CPU each) on one 2-core machine over 127.0.0.1",
               "cells": [{k: c.get(k) for k in ("model", "tool", "method", "precision", "node_id", "pid", "status",
                                                 *METRICS)} | {"node": nodes.get(c.get("node_id"))}
                         for c in res["cells"]]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sweep_two_node.json").write_text(json.dumps(summary, indent=2) + "\n")
    md = ["# `edgevit sweep` on a two-node Ray cluster (loopback)", "",
          f"`ray start --head --port {args.port} --num-cpus 1 --resources '{{\"sweep-head\": 1}}'` and "
          f"`ray start --address {addr} --num-cpus 1 --resources '{{\"sweep-node2\": 1}}'`, both on 127.0.0.1; "
          f"`edgevit sweep {args.grid} --address {addr} --workers 2`. {summary['note']}.", "",
          "| node | Ray node id | cells |", "|---|---|---|",
          *(f"| {name} | `{nid[:16]}…` | {per_node[name]} |" for nid, name in nodes.items()), "",
          f"{len(res['cells'])} cells, {res['cells_failed']} failed, {res['wall_s']:.1f} s"
          + ("" if same is None else f"; every cell's top-1, agreement, SQNR and size identical to the local "
                                     f"run in sweep_workers.json: **{'yes' if same else 'NO'}**") + ".", "",
          "| model | tool | method | precision | top-1 % | SQNR dB | node | worker pid |", "|---|---|---|---|---|---|---|---|",
          *(f"| {c['model']} | {c['tool']} | {c['method']} | {c['precision']} | {c.get('top1') or 0:.2f} | "
            f"{c.get('sqnr_db') or 0:.1f} | {c['node']} | {c['pid']} |" for c in summary["cells"]), ""]
    (RESULTS / "sweep_two_node.md").write_text("\n".join(md))
    print("\n".join(md))


def _ptq_compare_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("ptq_compare", Path(__file__).parent / "ptq_compare.py")
    pc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pc)
    return pc


def _ptq_compare_grid(pc, models):
    from edgevit.sweep import load_grid
    return pc.narrow(load_grid(pc.GRID), set(models), set(pc.PRECISIONS), True, None, None, None)


def ptq_compare_check(args) -> None:
    pc = _ptq_compare_module()
    grid = _ptq_compare_grid(pc, args.models)
    grid.cells = [c for c in grid.cells if c.spec["method"] not in ("adaround", "brecq")]   # the cheap cells
    with tempfile.TemporaryDirectory() as d:
        res, _ = run(grid, Path(d) / "pc", workers=2)
    _check_against_published(pc, res, args.models, "sweep_ptq_compare_check", "the RTN and peer cells")


def _check_against_published(pc, res: dict, models, stem: str, which: str) -> None:
    """Every row of a sweep of the ptq_compare grid against benchmarks/results/ptq_compare.json."""
    rows, _ = pc.to_rows(res["cells"], peers=True)
    old = {(r["model"], r["tool"], r["method"], r["fmt"], r["bits"]): r
           for r in json.loads((RESULTS / "ptq_compare.json").read_text())["results"]}
    keys = ("top1", "agreement", "sqnr_db", "packed_bytes")
    compared = []
    for r in rows:
        o = old.get((r["model"], r["tool"], r["method"], r["fmt"], r["bits"]))
        if o is None:
            continue
        if r["na"] or o["na"]:
            compared.append((r, o, bool(r["na"]) == bool(o["na"])))
            continue
        compared.append((r, o, all(r.get(k) == o.get(k) or (r.get(k) == float("inf") and o.get(k) == float("inf")) for k in keys)))
    same = sum(ok for *_, ok in compared)
    summary = {"benchmark": stem, "models": models, "which": which, "rows_compared": len(compared),
               "rows_identical": same, "wall_s": res["wall_s"], "workers": res["workers"],
               "rows": [{"model": r["model"], "tool": r["tool"], "method": r["method"], "fmt": r["fmt"], "bits": r["bits"],
                         "na": bool(r["na"]), **{f"sweep_{k}": r.get(k) for k in keys},
                         **{f"published_{k}": o.get(k) for k in keys}, "identical": ok} for r, o, ok in compared]}
    (RESULTS / f"{stem}.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    md = published_check_md(summary)
    (RESULTS / f"{stem}.md").write_text(md)
    print(md)


def published_check_md(summary: dict) -> str:
    """The Markdown of a check against the published table; top-1 where the data has labels, else the
    top-1 agreement with FP32 in brackets (MobileNetV2's photos have no labels)."""
    def acc(row, side):
        top1 = row[f"{side}_top1"]
        return f"{top1:.2f}" if top1 is not None else f"({row[f'{side}_agreement']:.2f})"

    def sqnr(row, side):
        v = row[f"{side}_sqnr_db"]
        return f"{float(v):.2f}" if v is not None else "-"

    which = summary.get("which", "the RTN and peer cells")
    md = ["# ptq_compare as a sweep reproduces the published numbers", "",
          f"{which[0].upper() + which[1:]} of `benchmarks/grids/ptq_compare.yaml` for {', '.join(summary['models'])}, "
          f"run by `edgevit.sweep` ({summary['workers']} workers, 1 torch thread each), against "
          f"`benchmarks/results/ptq_compare.json` (the script's own run before it became a grid): "
          f"**{summary['rows_identical']} of {summary['rows_compared']} rows identical** (top-1, agreement, SQNR, size; "
          "n/a rows stay n/a). Top-1 in brackets: agreement with FP32, where the data has no labels.", "",
          "| model | tool | method | precision | top-1 % sweep / published | SQNR dB sweep / published | identical |",
          "|---|---|---|---|---|---|---|",
          *(f"| {r['model']} | {r['tool']} | {r['method']} | {r['fmt']} {r['bits']} | "
            + ("n/a | n/a" if r["na"]
               else f"{acc(r, 'sweep')} / {acc(r, 'published')} | {sqnr(r, 'sweep')} / {sqnr(r, 'published')}")
            + f" | {'yes' if r['identical'] else 'NO'} |" for r in summary["rows"]), ""]
    return "\n".join(md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["workers", "two-node", "ptq-compare-check", "ptq-compare-workers"])
    ap.add_argument("--models", nargs="+", default=None,
                    help="ptq-compare-*: these models (default: mobilenet-mini for -check, mobilenetv2 for -workers)")
    ap.add_argument("--grid", default="benchmarks/grids/sweep_small.yaml")
    ap.add_argument("--port", type=int, default=6391)
    args = ap.parse_args()
    args.models = args.models or (["mobilenetv2"] if args.what == "ptq-compare-workers" else ["mobilenet-mini"])
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    {"workers": workers_bench, "two-node": two_node_bench, "ptq-compare-check": ptq_compare_check,
     "ptq-compare-workers": ptq_compare_workers}[args.what](args)


if __name__ == "__main__":
    main()
