"""A sweep grid: a YAML file of defaults plus one or more blocks whose list-valued keys are crossed.

    calib: fashion-mnist:128        # defaults for every cell (any cell key)
    eval_limit: 500
    grid:                           # one block, or a list of blocks
      model: [mobilenet-mini, vit-tiny]
      precision: [int:w8a8, int:w4a8, fp4:w4a6]
      method: rtn

Top-level keys starting with `x-` are ignored (a place for YAML anchors, as in docker-compose).
Everything is validated here, before any work: a bad grid is one UsageError naming the cell and the fix.
Each cell gets a stable key — a hash of its full spec and of the model's weights — so a re-run finds the
cells it already finished whatever order or file they came from.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from edgevit.errors import UsageError

SCHEMA = 1
TOOLS = {   # tool → (its methods, the default); peers get the float model, as in benchmarks/ptq_compare.py
    "edgevit": (("rtn", "adaround", "brecq"), "rtn"),
    "onnxruntime": (("MinMax", "Percentile", "Entropy"), "MinMax"),
    "brevitas": (("rtn", "gptq"), "rtn"),
}
EXPORTS = ("onnx", "tflite", "qnn")
DEFAULTS = {"weights": None, "tool": "edgevit", "method": None, "precision": "int:w8a8", "calib": "auto:256",
            "eval": "auto", "eval_limit": None, "seed": 0, "recipe": {}, "export": None, "hold": None}
CELL_KEYS = ("model", *DEFAULTS)
TOP_KEYS = (*CELL_KEYS, "grid", "name")
EXAMPLE = "e.g. grid: {model: [vit-tiny], precision: [int:w8a8, fp4:w4a6]}"


@dataclass
class Cell:
    """One quantize → (export) → evaluate run: its spec, the model's hash, its key, and why it cannot run
    (`na`: a peer that cannot express the precision — a result, not an error)."""
    spec: dict
    model_sha256: str
    key: str
    na: str | None = None

    def replace(self, **changes) -> "Cell":
        """The same cell with spec fields changed (re-validated, re-keyed): how a script narrows a grid file."""
        spec = check_cell("cell", {**self.spec, **changes, "method": changes.get("method", self.spec["method"])})
        return Cell(spec, self.model_sha256, cell_key(spec, self.model_sha256), peer_na(spec))

    def label(self) -> str:
        s = self.spec
        return f"{s['model']} {s['tool']} {s['method']} {s['precision']}"


@dataclass
class Grid:
    name: str
    cells: list[Cell]
    source: str = ""
    models: dict = field(default_factory=dict)   # model name → sha256 of its weights


def _fail(where: str, msg: str):
    raise UsageError(f"{where}: {msg}")


def read_grid_file(path: str | Path) -> dict:
    from edgevit.yaml_file import read_yaml
    return read_yaml(path, "grid", f"write a YAML grid ({EXAMPLE})")


def load_grid(grid, hash_models: bool = True) -> Grid:
    """A Grid from a YAML path or an already-parsed mapping: expanded, validated, keyed."""
    source = str(grid) if isinstance(grid, (str, Path)) else "<dict>"
    doc = read_grid_file(grid) if isinstance(grid, (str, Path)) else copy.deepcopy(grid)
    where = Path(source).name if source != "<dict>" else "grid"
    if not isinstance(doc, dict):
        _fail(where, f"must be a mapping of defaults plus `grid:` ({EXAMPLE})")
    unknown = sorted(k for k in set(doc) - set(TOP_KEYS) if not str(k).startswith("x-"))   # x-…: YAML anchors
    if unknown:
        _fail(where, f"unknown key {unknown[0]!r}; use {', '.join(k for k in TOP_KEYS if k != 'hold')}")
    blocks = doc.get("grid", [{}])
    blocks = [blocks] if isinstance(blocks, dict) else blocks
    if not isinstance(blocks, list) or not blocks or not all(isinstance(b, dict) for b in blocks):
        _fail(where, f"`grid:` must be a mapping or a list of mappings ({EXAMPLE})")
    defaults = {**DEFAULTS, **{k: v for k, v in doc.items() if k in CELL_KEYS}}
    specs = []
    for b, block in enumerate(blocks, 1):
        bad = sorted(set(block) - set(CELL_KEYS))
        if bad:
            _fail(f"{where} block {b}", f"unknown key {bad[0]!r}; use {', '.join(k for k in CELL_KEYS if k != 'hold')}")
        merged = {**defaults, **block}
        axes = [k for k in CELL_KEYS if isinstance(merged.get(k), list)]   # model outermost
        if any(not merged[k] for k in axes):
            _fail(f"{where} block {b}", f"empty list for {next(k for k in axes if not merged[k])!r}")
        for values in itertools.product(*(merged[k] for k in axes)):
            specs.append((f"{where} block {b}", {**merged, **dict(zip(axes, values))}))
    if not specs:
        _fail(where, "the grid has no cells")
    checked = [(w, check_cell(w, s)) for w, s in specs]
    models = {}
    for w, s in checked:
        m = (s["model"], s["weights"])
        if m not in models:
            try:
                models[m] = model_sha256(*m) if hash_models else ""
            except UsageError as e:
                _fail(w, str(e))
    cells, seen = [], set()
    for w, s in checked:
        h = models[(s["model"], s["weights"])]
        key = cell_key(s, h)
        if key in seen:
            continue   # the same cell reached from two blocks runs once
        seen.add(key)
        cells.append(Cell(s, h, key, peer_na(s)))
    name = str(doc.get("name") or (Path(source).stem if source != "<dict>" else "sweep"))
    return Grid(name, cells, source, {m[0]: h for m, h in models.items()})


def check_cell(where: str, s: dict) -> dict:
    """A cell's spec with defaults filled in, or UsageError: names, data specs, precision and recipe."""
    import quant
    from edgevit.data import parse_data_spec
    from edgevit.ptq import spec_errors
    if not isinstance(s.get("model"), str) or not s["model"]:
        _fail(where, f"every cell needs a `model:` name ({EXAMPLE})")
    where = f"{where} ({s['model']} {s.get('tool')} {s.get('precision')})"
    if s["tool"] not in TOOLS:
        _fail(where, f"unknown tool {s['tool']!r}; use {', '.join(TOOLS)}")
    methods, default = TOOLS[s["tool"]]
    s["method"] = default if s["method"] is None else s["method"]
    if s["method"] not in methods:
        _fail(where, f"{s['tool']} has no method {s['method']!r}; use {', '.join(methods)}")
    if not isinstance(s["precision"], str) or s["precision"].count(":") != 1:
        _fail(where, f"precision {s['precision']!r} must be FMT:BITS, e.g. int:w8a8 or fp4:w4a6")
    fmt, bits = s["precision"].split(":")
    if not isinstance(s["recipe"], dict):
        _fail(where, "recipe must be a mapping (the --recipe file's content), e.g. {reconstruction: {iters: 50}}")
    try:
        with spec_errors():
            spec = quant.parse_spec(fmt, bits, s["recipe"])
            if s["tool"] == "edgevit" and s["method"] != "rtn":   # reconstruction knobs fail here, not in a worker
                from quant.reconstruct import ReconConfig
                ReconConfig.from_dict({"seed": s["seed"]} | (spec.recipe.get("reconstruction") or {}))
        for k in ("calib", "eval"):
            if not isinstance(s[k], str):
                raise UsageError(f"{k} must be a data spec like fashion-mnist:256 or photos")
            parse_data_spec(s[k])
    except UsageError as e:
        _fail(where, str(e))
    if s["eval_limit"] is not None and (not isinstance(s["eval_limit"], int) or s["eval_limit"] < 1):
        _fail(where, "eval_limit must be a positive integer")
    if not isinstance(s["seed"], int):
        _fail(where, "seed must be an integer")
    if s["export"] not in (None, "none", *EXPORTS):
        _fail(where, f"export must be one of {', '.join(EXPORTS)} or none")
    s["export"] = None if s["export"] == "none" else s["export"]
    if s["hold"] is not None:
        h = s["hold"]
        if not (isinstance(h, dict) and isinstance(h.get("pid_file"), str) and set(h) <= {"pid_file", "seconds", "attempts"}):
            _fail(where, "hold (a test hook) is {pid_file: PATH, seconds: S, attempts: N}")
    return {k: s[k] for k in CELL_KEYS}


def peer_na(s: dict) -> str | None:
    """Why a peer cannot express this precision (the row says so instead of running), else None."""
    import quant
    fmt, bits = s["precision"].split(":")
    if s["tool"] == "onnxruntime":
        spec = quant.parse_spec(fmt, bits, s["recipe"])
        w, a = spec.default.weight, spec.default.act
        if fmt != "int":
            return "onnxruntime quantize_static has INT8/INT4/INT16 QDQ types (FP8 only via its float8 path); no FP4/FP6/MX"
        if a is not None and a.bits != 8:
            return f"onnxruntime QDQ types are 4/8/16 bit: no {a.bits}-bit activations"
        if a is None or w is None or w.bits not in (4, 8):
            return "onnxruntime quantize_static here runs W4/W8 weights with static 8-bit activations"
    if s["tool"] == "brevitas" and fmt.startswith("mx"):
        return "brevitas core has MX weights but no MX/per-token activation quantiser for the A side"
    return None


def model_sha256(name: str, weights: str | None) -> str:
    """sha256 over the model's state dict (names, dtypes, shapes, bytes): the same name with other weights
    is another model. Seeded so architectures without weights (timm:…) hash the same every time."""
    import torch

    from edgevit.models.registry import load_model
    torch.manual_seed(0)
    model, _ = load_model(name, weights)
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous().reshape(-1)
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# Rough cost of a cell relative to an edgevit RTN cell of the same model (measured on the ptq_compare grid:
# MobileNetV2 RTN ~85 s, AdaRound/BRECQ at 400 steps ~800 s, brevitas GPTQ ~900 s, onnxruntime ~15 s).
PEER_COST = {("onnxruntime", None): 0.5, ("brevitas", "rtn"): 1.5, ("brevitas", "gptq"): 10.0}
RECON_STEPS_PER_RTN = 40   # reconstruction steps that cost about one RTN cell


def relative_cost(spec: dict) -> float:
    """How heavy a cell is expected to be, only to order the queue longest first: with N workers the
    sweep then ends on short cells instead of one long cell running alone. Results never depend on it."""
    if spec["tool"] == "edgevit":
        cost = 1.0
        if spec["method"] in ("adaround", "brecq"):
            from quant.reconstruct import ReconConfig
            steps = (spec["recipe"].get("reconstruction") or {}).get("iters", ReconConfig.iters)
            cost += steps / RECON_STEPS_PER_RTN
    else:
        cost = PEER_COST.get((spec["tool"], spec["method"]), PEER_COST.get((spec["tool"], None), 1.0))
    return cost + (1.0 if spec["export"] else 0.0)


def run_order(cells: list[Cell]) -> list[Cell]:
    """Longest expected cell first (stable: equal costs keep the grid's order)."""
    return sorted(cells, key=lambda c: -relative_cost(c.spec))


def cell_key(spec: dict, model_hash: str) -> str:
    blob = json.dumps({"schema": SCHEMA, "spec": spec, "model_sha256": model_hash}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
