"""QNN (Qualcomm) runtime helpers: onnxruntime-qnn EP registration, sessions, node placement."""
from runtimes.qnn.session import QnnUnavailable, htp_placement, qnn_available, quantize_for_qnn

__all__ = ["QnnUnavailable", "htp_placement", "qnn_available", "quantize_for_qnn"]
