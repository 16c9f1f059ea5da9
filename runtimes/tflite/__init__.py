"""TFLite (LiteRT): litert-torch conversion, ai-edge-quantizer int8, ai-edge-litert execution.

Everything heavy is imported lazily through `require`, so `import runtimes.tflite` works without the
`tflite` extra and a missing package becomes one line naming the install command.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import os
import sys
import tempfile

from runtimes.errors import ExportError, RuntimeArtifactError

INSTALL_HINT = "pip install 'edgevit[tflite]'"


class TfliteUnavailable(RuntimeArtifactError):
    """A package of the `tflite` extra is missing (exit 2 at the CLI, naming the install command)."""


def require(module: str, purpose: str):
    """Import `module` or raise TfliteUnavailable saying what it is needed for and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise TfliteUnavailable(f"{purpose} needs the {module.split('.')[0]} package, which is not "
                                f"installed; {INSTALL_HINT}") from e


@contextlib.contextmanager
def quiet(error: type[Exception] = ExportError):
    """Send fd 1/2 (C++ logs) and sys.stdout/err to a temp file for the block; on error, name its last line."""
    with tempfile.TemporaryFile("w+b") as log:
        py = io.StringIO()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        saved = [os.dup(1), os.dup(2)]
        try:
            for fd in (1, 2):
                os.dup2(log.fileno(), fd)
            with contextlib.redirect_stdout(py), contextlib.redirect_stderr(py):
                yield
        except Exception as e:
            _restore(saved)
            log.seek(0)
            lines = log.read().decode(errors="replace").splitlines() + py.getvalue().splitlines()
            tail = [ln for ln in lines if ln.strip()][-1:]
            msg = (str(e).strip().splitlines() or [""])[0]
            where = f" (last log line: {tail[0].strip()})" if tail else ""
            raise error(f"{type(e).__name__}: {msg}{where}") from e
        finally:
            _restore(saved)
            for copy in saved:
                os.close(copy)


def _restore(saved: list[int]) -> None:
    for fd, copy in zip((1, 2), saved):
        try:
            os.dup2(copy, fd)
        except OSError:
            pass
