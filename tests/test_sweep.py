"""`edgevit sweep`: grids validated before any work, cells on a real local Ray (2 workers), a killed worker's
cell retried once then failed, Ctrl-C keeping finished cells, and a re-run doing no work."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from edgevit.cli import cli
from edgevit.sweep import load_grid, pareto_front, sweep
from edgevit.sweep.grid import run_order

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"name": "small", "calib": "fashion-mnist:32", "eval_limit": 100,
         "grid": {"model": ["mobilenet-mini", "vit-tiny"], "precision": ["int:w8a8", "int:w4a8", "fp4:w4a6"]}}


def write_grid(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def wait_for(path: Path, timeout: float = 120.0) -> Path:
    t0 = time.monotonic()
    while not path.exists():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.05)
    return path


def ctrl_c_enabled() -> None:
    """A test run started in the background without job control (`make test &`) ignores SIGINT, and
    children inherit that; give the child Python its default KeyboardInterrupt handling back."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def sigint_default():
    old = signal.signal(signal.SIGINT, signal.default_int_handler)   # see ctrl_c_enabled
    yield
    signal.signal(signal.SIGINT, old)


# -- grids: expansion, keys, validation ----------------------------------------------------------------
def test_grid_expands_with_stable_keys():
    g = load_grid(SMALL)
    assert [(c.spec["model"], c.spec["precision"]) for c in g.cells] == [
        (m, p) for m in SMALL["grid"]["model"] for p in SMALL["grid"]["precision"]]
    assert len({c.key for c in g.cells}) == 6
    assert [c.key for c in load_grid(SMALL).cells] == [c.key for c in g.cells]      # stable across loads
    reordered = {**SMALL, "grid": {"precision": SMALL["grid"]["precision"][::-1], "model": SMALL["grid"]["model"]}}
    assert {c.key for c in load_grid(reordered).cells} == {c.key for c in g.cells}  # keyed by spec, not position
    changed = load_grid({**SMALL, "eval_limit": 101})
    assert not {c.key for c in changed.cells} & {c.key for c in g.cells}           # any spec change is a new cell
    assert set(g.models) == {"mobilenet-mini", "vit-tiny"} and all(len(h) == 64 for h in g.models.values())


def test_blocks_defaults_and_peer_rows():
    g = load_grid({"calib": "fashion-mnist:32", "grid": [
        {"model": "vit-tiny", "precision": ["int:w8a8", "fp4:w4a6"]},
        {"model": "vit-tiny", "precision": "int:w8a8"},                               # duplicate: runs once
        {"model": "vit-tiny", "tool": "onnxruntime", "method": ["MinMax", "Percentile"],
         "precision": ["int:w8a8", "int:w4a6", "fp4:w4a8"]}]})
    assert len(g.cells) == 2 + 6
    ort = [c for c in g.cells if c.spec["tool"] == "onnxruntime"]
    assert [c.na is None for c in ort] == [True, False, False, True, False, False]
    assert all(c.spec["calib"] == "fashion-mnist:32" for c in g.cells)
    assert {c.spec["method"] for c in g.cells if c.spec["tool"] == "edgevit"} == {"rtn"}


def test_queue_runs_the_longest_cells_first():
    """Reconstruction and GPTQ cells start before RTN and onnxruntime cells, so 2 workers do not end on one
    long cell alone; equal costs keep the grid's order."""
    g = load_grid({"calib": "fashion-mnist:32", "model": "vit-tiny", "grid": [
        {"precision": ["int:w8a8", "int:w4a8"]},
        {"tool": "onnxruntime", "precision": "int:w8a8"},
        {"tool": "brevitas", "method": "gptq", "precision": "int:w4a8"},
        {"method": "adaround", "precision": "int:w4a8", "recipe": {"reconstruction": {"iters": 40}}},
        {"method": "brecq", "precision": "int:w4a8"}]}, hash_models=False)
    order = [(c.spec["tool"], c.spec["method"], c.spec["precision"]) for c in run_order(g.cells)]
    assert order == [("edgevit", "brecq", "int:w4a8"), ("brevitas", "gptq", "int:w4a8"),
                     ("edgevit", "adaround", "int:w4a8"), ("edgevit", "rtn", "int:w8a8"),
                     ("edgevit", "rtn", "int:w4a8"), ("onnxruntime", "MinMax", "int:w8a8")]


def test_pareto_front():
    pts = [(100.0, 90.0), (50.0, 85.0), (60.0, 84.0), (200.0, 95.0), (200.0, 93.0), (40.0, 70.0)]
    assert pareto_front(pts) == [5, 1, 0, 3]


BAD = {
    "not-a-mapping": ("- vit-tiny\n", "must be a mapping"),
    "unknown-top": ("modle: vit-tiny\n", "unknown key 'modle'"),
    "unknown-cell": ("grid: {model: vit-tiny, precison: int:w8a8}\n", "unknown key 'precison'"),
    "bad-bits": ("grid: {model: vit-tiny, precision: [int:w8a8, int:w9a3]}\n", "w9a3"),
    "bad-precision": ("grid: {model: vit-tiny, precision: w8a8}\n", "FMT:BITS"),
    "bad-method": ("grid: {model: vit-tiny, tool: onnxruntime, method: brecq}\n", "no method 'brecq'"),
    "bad-tool": ("grid: {model: vit-tiny, tool: nncf}\n", "unknown tool"),
    "bad-model": ("grid: {model: [vit-tiny, vit-tinyy]}\n", "unknown model 'vit-tinyy'"),
    "bad-data": ("calib: fashion-mnist:0\ngrid: {model: vit-tiny}\n", "bad sample count"),
    "bad-recon": ("grid: {model: vit-tiny, method: brecq, recipe: {reconstruction: {iters: 0}}}\n", "iters must be"),
    "empty-axis": ("grid: {model: []}\n", "empty list"),
    "no-model": ("grid: {precision: int:w8a8}\n", "needs a `model:`"),
    "bad-yaml": ("grid: [\n", "not valid YAML"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_grid_exits_2_with_one_line_before_any_work(cli_runner, tmp_path, case):
    text, needle = BAD[case]
    (tmp_path / "g.yaml").write_text(text)
    r = cli_runner.invoke(cli, ["sweep", str(tmp_path / "g.yaml"), "--out", str(tmp_path / "out")])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.output
    assert not (tmp_path / "out").exists()


def test_out_that_is_not_a_sweep_is_kept(cli_runner, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("x")
    r = cli_runner.invoke(cli, ["sweep", str(write_grid(tmp_path / "g.yaml", SMALL)), "--out", str(out)])
    assert r.exit_code == 2 and "not empty" in r.output
    assert (out / "precious.txt").read_text() == "x"


# -- runs on a real local Ray --------------------------------------------------------------------------
@pytest.mark.slow
def test_small_grid_two_workers_then_rerun_does_no_work(cli_runner, tmp_path):
    grid, out = write_grid(tmp_path / "small.yaml", SMALL), tmp_path / "out"
    r = cli_runner.invoke(cli, ["sweep", str(grid), "--out", str(out), "--workers", "2", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["workers"] == 2 and res["cells_run"] == 6 and res["cells_reused"] == 0 and res["cells_failed"] == 0
    cells = res["cells"]
    assert [c["status"] for c in cells] == ["ok"] * 6
    for c in cells:
        assert 0 <= c["agreement"] <= 100 and c["eval_images"] == 100 and c["size_bytes"] < c["fp32_bytes"]
        assert c["node_id"] in res["ray_nodes"] and c["pid"] != os.getpid()
    by = {(c["model"], c["precision"]): c for c in cells}
    for m in SMALL["grid"]["model"]:   # 8-bit weights are closer to FP32 than 4-bit ones
        assert by[(m, "int:w8a8")]["sqnr_db"] > by[(m, "int:w4a8")]["sqnr_db"]
    files = sorted((out / "cells").glob("*.json"))
    assert [f.stem for f in files] == sorted(c["key"] for c in cells)
    assert not list(out.rglob("*.tmp"))
    md = (out / "sweep.md").read_text()
    assert md.count("| ok |") == 6 and (out / "pareto.png").stat().st_size > 1000
    stamps = {f: f.stat().st_mtime_ns for f in files}

    r = cli_runner.invoke(cli, ["sweep", str(grid), "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    again = json.loads(r.output)
    assert again["cells_run"] == 0 and again["cells_reused"] == 6 and again["ray_nodes"] == {}
    assert [c["sqnr_db"] for c in again["cells"]] == [c["sqnr_db"] for c in cells]
    assert {f: f.stat().st_mtime_ns for f in files} == stamps


class Killer(threading.Thread):
    """Kill the worker process of a holding cell (SIGKILL, as the OOM killer would) on given attempts."""

    def __init__(self, pid_file: Path, attempts: int):
        super().__init__(daemon=True)
        self.pid_file, self.attempts, self.killed, self.error = pid_file, attempts, [], None

    def run(self):
        try:
            for a in range(1, self.attempts + 1):
                pid = int(wait_for(Path(f"{self.pid_file}.{a}")).read_text())
                os.kill(pid, signal.SIGKILL)
                self.killed.append(pid)
        except Exception as e:  # noqa: BLE001 — reported by the test
            self.error = e


@pytest.mark.slow
def test_killed_worker_cell_is_retried_once_then_failed(tmp_path):
    base = {"calib": "fashion-mnist:32", "eval_limit": 100, "model": "mobilenet-mini"}
    grid = {**base, "grid": [
        {"precision": "int:w8a8", "hold": {"pid_file": str(tmp_path / "a"), "seconds": 120, "attempts": 1}},
        {"precision": "int:w4a8", "hold": {"pid_file": str(tmp_path / "b"), "seconds": 120, "attempts": 2}},
        {"precision": "fp4:w4a6"}]}
    killers = [Killer(tmp_path / "a", 1), Killer(tmp_path / "b", 2)]
    for k in killers:
        k.start()
    res = sweep(grid, tmp_path / "out", workers=2, progress=False)
    for k in killers:
        k.join(5)
        assert k.error is None and len(k.killed) == k.attempts
    a, b, c = res["cells"]
    assert a["status"] == "ok" and a["attempts"] == 2 and a["pid"] not in killers[0].killed
    assert b["status"] == "failed" and b["attempts"] == 2 and "worker died 2 times" in b["error"]
    assert c["status"] == "ok" and c["attempts"] == 1
    assert res["cells_failed"] == 1
    on_disk = json.loads((tmp_path / "out" / "cells" / f"{b['key']}.json").read_text())
    assert on_disk["status"] == "failed"
    assert "failed: worker died" in (tmp_path / "out" / "sweep.md").read_text()


@pytest.mark.slow
def test_ctrl_c_stops_and_keeps_finished_cells(tmp_path):
    out = tmp_path / "out"
    grid = write_grid(tmp_path / "g.yaml", {
        "calib": "fashion-mnist:32", "eval_limit": 100, "model": "vit-tiny", "grid": [
            {"precision": "int:w8a8"},
            {"precision": "int:w4a8", "hold": {"pid_file": str(tmp_path / "h"), "seconds": 300, "attempts": 9}}]})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "edgevit.cli", "sweep", str(grid), "--out", str(out),
                             "--workers", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=ctrl_c_enabled)
    try:
        wait_for(tmp_path / "h.1")
        t0 = time.monotonic()
        while not list((out / "cells").glob("*.json")) and time.monotonic() - t0 < 120:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, output
    finished = [json.loads(f.read_text()) for f in (out / "cells").glob("*.json")]
    assert [(r["precision"], r["status"]) for r in finished] == [("int:w8a8", "ok")]
    res = json.loads((out / "sweep.json").read_text())
    assert [c.get("status", "pending") for c in res["cells"]] == ["ok", "pending"]
    assert not list(out.rglob("*.tmp"))


@pytest.mark.slow
def test_peers_and_export_are_cells(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("brevitas")
    grid = {"calib": "fashion-mnist:32", "eval_limit": 100, "model": "mobilenet-mini", "grid": [
        {"precision": "int:w8a8", "export": "onnx"},
        {"tool": "onnxruntime", "method": "MinMax", "precision": ["int:w8a8", "fp4:w4a6"]},
        {"tool": "brevitas", "precision": "int:w8a8"}]}
    res = sweep(grid, tmp_path / "out", workers=2, progress=False)
    ev, ort, ort_na, brev = res["cells"]
    assert [c["status"] for c in res["cells"]] == ["ok", "ok", "n/a", "ok"]
    assert ev["export"]["runtime"] == "onnx" and ev["export"]["parity"]["top1_agreement"] > 0.9
    assert ev["export"]["latency_ms"] > 0   # the Pareto plot's latency axis (a second row of panels)
    assert ort["sqnr_db"] > 20 and brev["sqnr_db"] > 20 and "FP4" in ort_na["na"]
    assert "node_id" not in ort_na and " ms" in (tmp_path / "out" / "sweep.md").read_text()
    from PIL import Image
    assert Image.open(tmp_path / "out" / "pareto.png").size[1] > 1000   # size row + latency row


@pytest.mark.slow
def test_analyze_fans_out_over_workers_with_the_serial_rows(cli_runner, tmp_path):
    args = ["analyze", "mobilenet-mini", "--bits", "w4a8", "--calib", "fashion-mnist:64", "--eval-limit", "200"]
    serial = cli_runner.invoke(cli, [*args, "--out", str(tmp_path / "serial")])
    fanned = cli_runner.invoke(cli, [*args, "--workers", "2", "--out", str(tmp_path / "fanned")])
    assert serial.exit_code == 0 and fanned.exit_code == 0, serial.output + fanned.output
    a, b = (json.loads((tmp_path / d / "sensitivity.json").read_text()) for d in ("serial", "fanned"))
    assert len(a["layers"]) > 20 and b["workers"] == 2
    assert b["layers"] == a["layers"]                      # every row, in model order, bit for bit
    assert {k: b[k] for k in a} == a


@pytest.mark.slow
def test_auto_sensitivity_on_ray_workers_is_the_serial_matrix():
    """`quantize --bits auto --workers N`: the full sensitivity matrix, one Ray task per candidate, equals the
    serial one at the same thread count (1), column for column."""
    import numpy as np
    import torch

    import quant.mixed_precision as mp
    from edgevit.data import load_data
    from edgevit.models.registry import load_model
    from edgevit.ray_pool import ray_map
    model, meta = load_model("mobilenet-mini")
    x, _ = load_data("fashion-mnist:64", meta.preprocess, split="train", seed=0)
    cands = mp.parse_candidates("int:w8a8,int:w4a8,int:w2a8,float")
    names = [n for n, _ in mp.weighted_layers(model)][:8]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = mp.sensitivity_matrix(model, cands, x, x[:32], names, mode="full")
    finally:
        torch.set_num_threads(threads)
    fanned = mp.sensitivity_matrix(model, cands, x, x[:32], names, mode="full", map_fn=ray_map(2))
    assert serial.shape == (8, 4) and (serial[:, :3] > 0).all() and (serial[:, 3] == 0).all()
    assert np.array_equal(serial, fanned)


@pytest.mark.parametrize("extra, needle", [
    (["--bits", "w8a8", "--workers", "2"], "use them with --bits auto"),
    (["--bits", "auto", "--max-size", "120kB", "--address", "auto"], "--address needs --workers"),
    (["--bits", "auto", "--max-size", "120kB", "--workers", "2", "--sensitivity", "scaled"], "nothing to spread"),
])
def test_quantize_workers_misuse_is_refused_before_work(cli_runner, tmp_path, extra, needle):
    r = cli_runner.invoke(cli, ["quantize", "mobilenet-mini", *extra, "--out", str(tmp_path / "q")])
    assert r.exit_code == 2 and needle in r.output and not (tmp_path / "q").exists()


def test_interrupts_are_held_while_results_are_written(sigint_default):
    """A Ctrl-C that lands while sweep.json / the plot are written is delivered after the write, as
    KeyboardInterrupt (exit 130), never inside it (edgevit.sweep.run.deferred_signals)."""
    from edgevit.sweep.run import deferred_signals
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            done.append(True)          # the block finishes first
    assert done == [True] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
