"""edgevit pipeline: recipe validation (keys = CLI flags), resume, --force, failure handling."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from edgevit.errors import StageError, UsageError
from edgevit.pipeline import load_recipe
from edgevit.pipeline.recipe import STAGES, command_for, flag_name, stage_keys

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, doc) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return p


@pytest.mark.parametrize("stage", STAGES)
def test_every_cli_flag_is_a_recipe_key(stage):
    """The real CLI command's stage flags (not only the shared declaration) are recipe keys, and the only
    flags that are not are the terminal's own (MODEL, --out, --json, --overwrite...)."""
    import importlib
    cmd = next(c for c in importlib.import_module(f"edgevit.commands.{stage}").COMMANDS if c.name == stage)
    keys = stage_keys(stage)
    terminal = {"model", "weights", "trust-checkpoint", "out", "force", "overwrite", "list-passes", "help", "json"}
    flags = {flag_name(p) for p in cmd.params}
    if stage == "stitch":
        terminal.discard("weights")        # stitch's --weights is one state dict per anchor: a stage key
    assert flags - terminal == {k for k, p in keys.items() if p is not None}
    assert {flag_name(p) for p in command_for(stage).params} <= flags


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    r = load_recipe(path)
    assert r.stages and r.model


def test_demo_recipe_is_the_issue_demo():
    r = load_recipe(ROOT / "recipes" / "demo.yaml")
    kinds = [s.kind for s in r.stages]
    assert r.model == "vit-small" and set(kinds) == {"quantize", "rewrite", "split", "export"}
    q = r.stages[kinds.index("quantize")].options
    assert (q["fmt"], q["bits"]) == ("fp4", "w4a6")
    assert str(r.stages[kinds.index("split")].options["devices"]) == "4"
    assert r.stages[-1].options["runtime"] == ["onnx", "tflite"]


@pytest.mark.parametrize("doc, message", [
    ({"model": "vit-tiny", "stages": [{"quantize": {"fmt": "fp5"}}]}, "stages[0].quantize.fmt"),
    ({"model": "vit-tiny", "stages": [{"quantize": {"bitz": "w8a8"}}]}, "did you mean 'bits'"),
    ({"model": "vit-tiny", "stages": [{"quantise": {}}]}, "did you mean 'quantize'"),
    ({"model": "vit-tiny", "stages": [{"split": {"epochs": 0}}]}, "stages[0].split.epochs"),
    ({"model": "vit-tiny", "stages": [{"split": {"devices": 2, "out": "x"}}]}, "pipeline owns it"),
    ({"model": "vit-tiny", "stages": [{"quantize": {"model": "vit-small"}}]}, "top of the recipe"),
    ({"model": "vit-tiny", "stages": [{"export": {"static-batch": "yes"}}]}, "is a switch"),
    ({"model": "vit-tiny", "stages": [{"export": {}}, {"quantize": {}}]}, "export must be last"),
    ({"model": "vit-tiny", "stages": [{"rewrite": {}}, {"split": {"devices": 2}}]}, "put split before rewrite"),
    ({"model": "vit-tiny", "stages": []}, "stages is empty"),
    ({"stages": [{"export": {}}]}, "no `model:`"),
    ({"model": "vit-tiny", "seeds": 1, "stages": [{"export": {}}]}, "did you mean 'seed'"),
    ({"model": "vit-tiny", "stages": [{"quantize": None, "export": None}]}, "one-key mapping"),
    ("model: [unclosed", "not valid YAML"),
])
def test_recipe_errors_name_the_key(tmp_path, doc, message):
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        load_recipe(write(tmp_path, doc))


def test_cli_check_exit_codes(tmp_path, cli_runner):
    from edgevit.cli import cli
    bad = write(tmp_path, {"model": "vit-tiny", "stages": [{"quantize": {"bits": "w9a3"}}]})
    res = cli_runner.invoke(cli, ["pipeline", str(bad), "--check"])
    assert res.exit_code == 2 and "stages[0].quantize" in res.output and "Traceback" not in res.output
    res = cli_runner.invoke(cli, ["pipeline", str(ROOT / "recipes" / "demo.yaml"), "--check"])
    assert res.exit_code == 0, res.output
    res = cli_runner.invoke(cli, ["pipeline", str(write(tmp_path, {"model": "no-such-model",
                                                                    "stages": [{"export": {}}]})), "--check"])
    assert res.exit_code == 2


SMALL = {"model": "vit-tiny", "eval-data": "fashion-mnist:64", "latency-iters": 3,
         "stages": [{"quantize": {"fmt": "int", "bits": "w8a8", "calib": "fashion-mnist:32", "eval-limit": 64}},
                    {"export": {"runtime": "onnx", "parity-data": "fashion-mnist:32"}}]}


def _mtime(d: Path) -> float:
    return (d / "stage.json").stat().st_mtime_ns


def test_failure_keeps_earlier_stages_then_resume_and_force(tmp_path, monkeypatch):
    import edgevit.pipeline.stages as S
    from edgevit.pipeline import run
    recipe = load_recipe(write(tmp_path, SMALL))
    run_dir = tmp_path / "run"

    def broken(state, options, ctx):
        raise RuntimeError("disk on fire\nsecond line")
    monkeypatch.setitem(S.ADAPTERS, "export", (S.check_export, broken))
    with pytest.raises(StageError, match=r"stage 2 \(export\) failed: RuntimeError: disk on fire; earlier") as e:
        run(recipe, run_dir)
    assert "second line" not in str(e.value)
    q = run_dir / "01-quantize"
    assert (q / "state.pt").is_file() and (q / "report.json").is_file()
    first = _mtime(q)

    calls = []
    monkeypatch.setitem(S.ADAPTERS, "export", (S.check_export, lambda s, o, c: calls.append(1) or s))
    summary = run(recipe, run_dir)                        # resumes: quantize not redone
    assert _mtime(q) == first and calls == [1]
    assert [s["status"] for s in summary["stages"]] == ["resumed", "ran"]
    assert {r["runtime"] for r in summary["rows"]} == {"torch", "torch (fake-quant)"}
    assert json.loads((run_dir / "summary.json").read_text())["recipe"] == "r"

    summary = run(recipe, run_dir)                        # everything finished: nothing re-runs
    assert [s["status"] for s in summary["stages"]] == ["resumed", "resumed"] and calls == [1]

    run(recipe, run_dir, force=True)                      # --force redoes every stage
    assert _mtime(q) != first and calls == [1, 1]

    changed = load_recipe(write(tmp_path, {**SMALL, "stages": [
        {"quantize": {**SMALL["stages"][0]["quantize"], "bits": "w8a16"}}, SMALL["stages"][1]]}))
    before = _mtime(q)
    run(changed, run_dir)                                 # a changed option invalidates that stage
    assert _mtime(q) != before


def test_requant_after_structural_stage_is_recorded(tmp_path):
    """A stage after PTQ that changes the float model gets the same spec + calibration re-applied."""
    import torch
    from edgevit.models.registry import load_model
    from edgevit.pipeline.stages import _requant, quantize_with
    from edgevit.pipeline.state import State
    model, meta = load_model("vit-tiny")
    opts = load_recipe(write(tmp_path, SMALL)).stages[0].options
    q1 = quantize_with(model, meta, opts)[0]
    state = State(model, meta, dict(opts), q1)
    with torch.no_grad():
        model.head.weight.mul_(2)                         # "training" changed the float model
    state = _requant(state, "a test")
    assert state.qmodel is not q1 and "re-applied after a test" in state.notes[-1]
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert not torch.allclose(q1(x), state.qmodel(x))
        assert torch.allclose(state.qmodel(x), quantize_with(model, meta, opts)[0](x))   # deterministic


@pytest.mark.slow
def test_pipeline_end_to_end_float_split(tmp_path, cli_runner):
    """split → export ONNX + TFLite; both artifacts run and match the torch split model."""
    pytest.importorskip("litert_torch")
    from edgevit.cli import cli
    res = cli_runner.invoke(cli, ["pipeline", str(ROOT / "recipes" / "vit-tiny-fp32-split.yaml"),
                                  "--run-dir", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    rows = {r["runtime"]: r for r in s["rows"]}
    assert set(rows) == {"torch", "onnx", "tflite"}
    for rt in ("onnx", "tflite"):
        assert rows[rt]["parity"]["top1_agreement"] >= 0.99
        assert abs(rows[rt]["top1"] - rows["torch"]["top1"]) <= 0.5
        assert (Path(rows[rt]["path"]) / "manifest.json").is_file()
    assert any("split: 2 devices" in n for n in s["notes"])


@pytest.mark.slow
def test_pipeline_end_to_end_every_stage(tmp_path):
    """quantize → split → rewrite → export ONNX + TFLite on a tiny budget; quantisation re-applied."""
    pytest.importorskip("litert_torch")
    from edgevit.pipeline import run
    doc = {"model": "vit-tiny", "eval-data": "fashion-mnist:200", "latency-iters": 5, "stages": [
        {"quantize": {"fmt": "fp4", "bits": "w4a8", "calib": "fashion-mnist:64", "keep-float": ["*head"],
                      "eval-limit": 200}},
        {"split": {"devices": 2, "train-images": 400, "fusion-images": 200, "epochs": 1,
                   "eval-data": "fashion-mnist:200", "latency-rounds": 5}},
        {"rewrite": {"target": "npu", "data": "fashion-mnist:64", "report": False, "disable": ["split-heads"]}},
        {"export": {"runtime": ["onnx", "tflite"], "parity-data": "fashion-mnist:64"}}]}
    s = run(load_recipe(write(tmp_path, doc)), tmp_path / "run")
    rows = {r["runtime"]: r for r in s["rows"]}
    assert {"onnx", "tflite", "torch (fake-quant)"} <= set(rows)
    assert rows["onnx"]["precision"] == "w4a8" and rows["onnx"]["parity"]["top1_agreement"] >= 0.95
    assert sum("re-applied" in n for n in s["notes"]) == 2        # after split and after rewrite
    assert s["quantisation"]["kept_valid_by"].startswith("re-applied")
    assert rows["tflite"]["parity"]["top1_agreement"] >= 0.99      # litert vs its torch float twin
    assert abs(rows["onnx"]["top1"] - rows["torch (fake-quant)"]["top1"]) <= 1.0
    for rt in ("onnx", "tflite"):                                  # static batch 1 after the rewrite
        manifest = json.loads((Path(rows[rt]["path"]) / "manifest.json").read_text())
        assert manifest["input"]["shape"][0] == 1
