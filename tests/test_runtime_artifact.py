"""Artifact format: schema, atomic write, sha256 verification on load."""
import json

import pytest

from runtimes.artifact import ArtifactWriter, load_artifact, validate_manifest
from runtimes.errors import RuntimeArtifactError


def _manifest():
    return {"runtime": "onnx", "entry": "model.bin", "model": {"name": "toy"},
            "input": {"name": "input", "shape": ["batch", 1, 28, 28], "dtype": "float32"},
            "output": {"name": "logits", "shape": ["batch", 10], "dtype": "float32"},
            "preprocess": {"size": 28, "channels": 1, "mean": [0.286], "std": [0.353]},
            "labels": [str(i) for i in range(10)], "quant": None,
            "parity": {"thresholds": {"max_abs": 1e-4}}, "tools": {"onnx": "1"}}


def _write(out, **kw):
    with ArtifactWriter(out, **kw) as w:
        (w.dir / "model.bin").write_bytes(b"weights" * 10)
        (w.dir / "part0").mkdir()
        (w.dir / "part0" / "sub.bin").write_bytes(b"device 0")
        return w.commit(_manifest())


def test_write_then_load_hashes_every_file_including_parts(tmp_path):
    m = _write(tmp_path / "a")
    assert sorted(f["path"] for f in m["files"]) == ["model.bin", "part0/sub.bin"]
    art = load_artifact(tmp_path / "a")
    assert art.size_bytes == 70 + 8 and art.precision() == "fp32"
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # no staging dirs left


def test_corrupt_file_is_refused_with_clear_error(tmp_path):
    _write(tmp_path / "a")
    (tmp_path / "a" / "part0" / "sub.bin").write_bytes(b"device 1")
    with pytest.raises(RuntimeArtifactError, match="part0/sub.bin does not match its sha256"):
        load_artifact(tmp_path / "a")
    (tmp_path / "a" / "model.bin").unlink()
    with pytest.raises(RuntimeArtifactError, match="missing"):
        load_artifact(tmp_path / "a")


def test_interrupted_write_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with ArtifactWriter(tmp_path / "a") as w:
            (w.dir / "model.bin").write_bytes(b"half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_existing_destination_is_not_overwritten(tmp_path):
    _write(tmp_path / "a")
    before = (tmp_path / "a" / "manifest.json").read_text()
    with pytest.raises(RuntimeArtifactError, match="already exists"):
        _write(tmp_path / "a")
    assert (tmp_path / "a" / "manifest.json").read_text() == before
    _write(tmp_path / "a", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_schema_rejects_bad_manifests(tmp_path):
    validate_manifest({**_manifest(), "files": [{"path": "model.bin", "sha256": "0" * 64, "bytes": 1}],
                       "format_version": 1})
    bad = {**_manifest(), "files": [{"path": "../evil", "sha256": "0" * 64, "bytes": 1}], "format_version": 1}
    with pytest.raises(RuntimeArtifactError, match="files/0/path"):
        validate_manifest(bad)
    with pytest.raises(RuntimeArtifactError, match="field quant"):
        validate_manifest({**bad, "files": bad["files"][:0] + [{"path": "m", "sha256": "0" * 64, "bytes": 1}],
                           "quant": {"precision": "w9x"}})


def test_schema_file_is_plain_draft_2020_12():
    from runtimes.artifact import SCHEMA_PATH
    import jsonschema
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["$schema"].endswith("draft/2020-12/schema")
    jsonschema.Draft202012Validator.check_schema(schema)


def test_non_artifact_directory_is_refused(tmp_path):
    with pytest.raises(RuntimeArtifactError, match="no manifest.json"):
        load_artifact(tmp_path)


def test_parity_judges_agreement_on_decisive_images_only():
    import numpy as np
    """A flip where the torch model's own margin is inside the noise is a near-tie; a flip on a confident
    image still fails, and so does a large error whatever the ties (SQNR)."""
    from runtimes import parity
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((200, 10)) * 3
    ref[:10, 1] = ref[:10, 0] = ref[:10].max(1) + 1          # 10 exact ties between classes 0 and 1
    out = ref + rng.standard_normal(ref.shape) * 0.01         # ~50 dB of kernel noise
    out[:10, 1] += 0.02                                         # … which breaks every tie towards class 1
    m = parity.compare(ref, out)
    th = parity.THRESHOLDS["int8"]
    assert m["top1_agreement"] < th["top1_agreement"] and m["decisive_n"] <= 190
    assert m["top1_agreement_decisive"] == 1.0 and parity.failures(m, th) == []
    assert parity.failures(m, th, exclude_ties=False)         # the raw bar (TFLite INT8 vs float) still sees them
    out[50] = out[50][::-1]                                    # a confident image flipped: a real disagreement
    assert any("agreement" in f for f in parity.failures(parity.compare(ref, out), th))
    assert any("SQNR" in f for f in parity.failures(parity.compare(ref, ref + rng.standard_normal(ref.shape)), th))


def test_sqnr_bar_follows_the_reference_float_order_noise():
    """A quantised reference whose own float32 outputs sit 22 dB from its float64 ones cannot be matched closer
    by another runtime: the bar drops to that noise less 3 dB — never below MIN_SQNR_DB; a stable reference keeps
    the full bar, and so does top-1 agreement."""
    from runtimes import parity
    th = parity.THRESHOLDS["int8"]
    assert parity.with_reference_noise(th, {"sqnr_db": 48.0}) == th
    assert parity.with_reference_noise(th, {"sqnr_db": "inf"}) == th
    noisy = parity.with_reference_noise(th, {"sqnr_db": 21.97})
    assert noisy == {**th, "sqnr_db": 19.0} and noisy["top1_agreement"] == th["top1_agreement"]
    assert parity.with_reference_noise(th, {"sqnr_db": 9.0})["sqnr_db"] == parity.MIN_SQNR_DB
    m = {"n": 63, "top1_agreement": 0.94, "decisive_n": 33, "top1_agreement_decisive": 1.0, "max_abs": 1.5}
    assert parity.failures({**m, "sqnr_db": 21.6}, th) and not parity.failures({**m, "sqnr_db": 21.6}, noisy)
    assert parity.failures({**m, "sqnr_db": 12.0}, noisy)                    # a real error still fails


def test_fp32_max_abs_bar_is_relative_to_the_logit_scale():
    """1e-4 absolute for ordinary logits; 1e-5 of the largest logit where they are huge (random-init MobileOne,
    ~1e15, off by 1e9 = 8e-7 relative in TFLite, and torch itself by 7e8 against float64)."""
    import numpy as np
    from runtimes import parity
    th = parity.THRESHOLDS["fp32"]
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((16, 10)) * 5
    assert parity.failures(parity.compare(ref, ref + 5e-5), th) == []
    assert any("max abs" in f for f in parity.failures(parity.compare(ref, ref + 2e-4), th))   # still 1e-4 here
    big = ref * 2.5e14
    assert parity.failures(parity.compare(big, big * (1 + 8e-7)), th) == []
    bad = parity.failures(parity.compare(big, big * (1 + 1e-4)), th)
    assert bad and "of the largest logit" in bad[0]
    old = {k: v for k, v in parity.compare(ref, ref + 5e-5).items() if k != "ref_max_abs"}  # older records
    assert parity.max_abs_bar(th, old) == 1e-4
