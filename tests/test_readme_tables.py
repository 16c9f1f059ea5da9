"""The README's result tables are generated from benchmarks/results, never typed by hand."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_tables_are_up_to_date(benchmark_module):
    mod = benchmark_module("readme_tables")
    text = (ROOT / "README.md").read_text()
    assert "<!-- results:zoo -->" in text
    assert mod.render(text) == text, "run: .venv/bin/python benchmarks/readme_tables.py"


def test_render_replaces_only_marked_blocks(benchmark_module):
    mod = benchmark_module("readme_tables")
    text = "intro\n<!-- results:zoo -->\nstale\n<!-- /results:zoo -->\nend\n"
    out = mod.render(text)
    assert "stale" not in out and "vit-small" in out and out.startswith("intro\n") and out.endswith("end\n")
