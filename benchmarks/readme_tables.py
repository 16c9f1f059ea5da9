"""Copy the benchmark tables in benchmarks/results/*.md into README.md, between markers.

    .venv/bin/python benchmarks/readme_tables.py          # rewrite README.md in place
    .venv/bin/python benchmarks/readme_tables.py --check  # exit 1 if README is stale

The README holds `<!-- results:NAME -->` … `<!-- /results:NAME -->` blocks; each is replaced by
benchmarks/results/NAME.md, so no result is ever typed by hand. The bundled-model table comes from
the training records in edgevit/models/weights/.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BLOCK = re.compile(r"(<!-- results:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S)


def zoo_table() -> str:
    rows = ["| model | params | Fashion-MNIST test top-1 | epochs | trained on |", "|---|---|---|---|---|"]
    for path in sorted((ROOT / "edgevit" / "models" / "weights").glob("*.json")):
        r = json.loads(path.read_text())
        rows.append(f"| `{r['model']}` | {r['params'] / 1e6:.2f} M | {r['test_top1']:.2f} % | "
                    f"{r['recipe']['epochs']} | {r.get('device', 'cpu')} |")
    return "\n".join(rows) + "\n"


def pipeline_table(path: Path) -> str:
    """The `make demo` summary (written by `edgevit pipeline`, copied into results/)."""
    d = json.loads(path.read_text())
    rows = ["| runtime | precision | size | top-1 | p50 latency |", "|---|---|---|---|---|"]
    for r in d["rows"]:
        size = f"{r['size_bytes'] / 1e6:.3f} MB" if r.get("size_bytes") else "-"
        rows.append(f"| {r['runtime']} | {r['precision']} | {size} | {r['top1']:.2f} % | {r['latency_p50_ms']:.3f} ms |")
    lat = d["latency"]
    rows += ["", f"`{d['command']}`: {d['wall_s_total']:.0f} s in all on {d['machine']}; top-1 on {d['eval_images']} "
             f"test images; latency batch {lat['batch']}, {lat['threads']} thread, median of {lat['rounds']} interleaved rounds.",
             "", *[f"- {n}" for n in d["notes"]]]
    return "\n".join(rows) + "\n"


def table(name: str) -> str:
    if name == "zoo":
        return zoo_table()
    if name == "pipeline_demo":
        return pipeline_table(RESULTS / "pipeline_demo.json")
    path = RESULTS / f"{name}.md"
    if path.exists():  # demote the file's own headings below the README section that embeds it
        return "\n".join("###" + line if line.startswith("#") else line
                         for line in path.read_text().rstrip().splitlines()) + "\n"
    return f"_(no results yet: run the benchmark that writes {path.relative_to(ROOT)})_\n"


def render(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + table(m.group("name")) + m.group(4), text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="fail if README.md is not up to date")
    args = ap.parse_args()
    readme = ROOT / "README.md"
    old = readme.read_text()
    new = render(old)
    if args.check:
        return int(new != old)
    readme.write_text(new)
    print(f"README.md: {len(BLOCK.findall(new))} result blocks refreshed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
