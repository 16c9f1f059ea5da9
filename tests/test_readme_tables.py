"""The README's result tables are generated from benchmarks/results, never typed by hand."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "benchmarks" / "readme_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_tables_are_up_to_date():
    mod = _module()
    text = (ROOT / "README.md").read_text()
    assert "<!-- results:zoo -->" in text
    assert mod.render(text) == text, "run: .venv/bin/python benchmarks/readme_tables.py"


def test_render_replaces_only_marked_blocks():
    mod = _module()
    text = "intro\n<!-- results:zoo -->\nstale\n<!-- /results:zoo -->\nend\n"
    out = mod.render(text)
    assert "stale" not in out and "vit-small" in out and out.startswith("intro\n") and out.endswith("end\n")
