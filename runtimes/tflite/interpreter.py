"""One place that builds a LiteRT Interpreter: ai-edge-litert, else the legacy tflite_runtime."""
from __future__ import annotations

from pathlib import Path

from runtimes.errors import RuntimeArtifactError
from runtimes.tflite import INSTALL_HINT, TfliteUnavailable, quiet


def _interpreter_module(delegates: bool):
    """(Interpreter class, resolver-type enum or None) from whichever LiteRT package is installed."""
    try:
        from ai_edge_litert import interpreter as lite
    except ImportError:
        try:
            from tflite_runtime import interpreter as lite  # old numpy<2 wheel; runs older op versions only
        except ImportError as e:
            raise TfliteUnavailable(f"running .tflite files needs ai-edge-litert; {INSTALL_HINT}") from e
    return lite.Interpreter, getattr(lite, "OpResolverType", None)


def make_interpreter(model: str | Path | bytes, threads: int = 1, delegates: bool = True):
    """An allocated Interpreter for a .tflite path or buffer.

    `delegates=False` uses the builtin kernels without XNNPACK, so `_get_ops_details()` lists the
    model's real ops (with XNNPACK they collapse into DELEGATE nodes) — what the int8 check needs.
    """
    cls, resolver = _interpreter_module(delegates)
    kwargs = {"num_threads": threads}
    if not delegates and resolver is not None:
        kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    if isinstance(model, (bytes, bytearray, memoryview)):
        kwargs["model_content"] = bytes(model)
    else:
        kwargs["model_path"] = str(model)
    try:
        with quiet(RuntimeArtifactError):  # LiteRT logs "INFO: Created ... delegate" on every load
            it = cls(**kwargs)
            it.allocate_tensors()
    except RuntimeArtifactError as e:
        what = "the model" if "model_content" in kwargs else model
        raise RuntimeArtifactError(f"LiteRT cannot load {what}: {e}") from e
    return it
