"""QNN (Qualcomm) runtime: QDQ bundle with edgevit's encodings, offline context binaries, HTP runs.

session.py: EP registration, onnxruntime's own QNN quantisation, node placement. bundle.py: the
QNN-legal QDQ graph carrying quant/'s scales; glue.py: the recipe's extra encodings in the torch
reference; encodings.py: AIMET-style JSON; compile.py: EPContext
binaries per Snapdragon; runner.py: execution; artifact.py: `export_qnn_artifact`. Heavy modules load
lazily, so `import runtimes.qnn` works without torch or onnxruntime-qnn.
"""
from runtimes.qnn.session import QnnUnavailable, htp_placement, qnn_available, quantize_for_qnn

__all__ = ["QnnUnavailable", "htp_placement", "qnn_available", "quantize_for_qnn", "export_qnn_artifact",
           "QnnRunner", "SOCS", "parse_soc"]
_LAZY = {"export_qnn_artifact": "runtimes.qnn.artifact", "QnnRunner": "runtimes.qnn.runner",
         "SOCS": "runtimes.qnn.compile", "parse_soc": "runtimes.qnn.compile"}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
