"""edgevit: from a trained vision backbone to artifacts that run on edge devices.

The public API (edgevit.api; loaded on first use so `import edgevit` and the CLI start fast):
`load_model`, `quantize` (→ `Quantized`, `.save(out)`), `rewrite_model`, `split_model`, `stitch_models`, `export`, `load_artifact`, `run`, `bench`,
`check_parity` (→ `ParityCheck`), `run_pipeline` (`edgevit.pipeline` is the package). The stage
packages behind them: edgevit.ptq, edgevit.rewrite, edgevit.split, edgevit.stitch, edgevit.artifacts.
"""
from edgevit.version import __version__ as __version__

_API = ("load_model", "quantize", "Quantized", "rewrite_model", "split_model", "stitch_models", "export",
        "load_artifact", "run", "bench", "check_parity", "ParityCheck", "run_pipeline", "ModelMeta")


def __getattr__(name: str):
    if name in _API:
        from edgevit import api
        return getattr(api, name)
    raise AttributeError(f"module 'edgevit' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])
