"""QNN-specific errors: ExportError / RuntimeArtifactError subclasses, so the CLI maps them to exit 2."""
from __future__ import annotations

from runtimes.errors import ExportError, RuntimeArtifactError

INSTALL_HINT = "pip install 'edgevit[qnn]'"


class QnnMissing(RuntimeArtifactError):
    """onnxruntime-qnn (extra `qnn`) is not installed or its HTP backend cannot be loaded."""


class QnnExportError(ExportError):
    """The model or its quantisation has no QNN HTP encoding (FP grids, dynamic activations, ...)."""


def require_qnn() -> None:
    """Raise QnnMissing naming the install command unless onnxruntime-qnn imports."""
    try:
        import onnxruntime_qnn  # noqa: F401
    except ImportError as e:
        raise QnnMissing(f"QNN bundles are compiled and run with onnxruntime-qnn, which is not installed; "
                         f"{INSTALL_HINT}") from e
