"""Execute ONNX artifacts with onnxruntime on the CPU."""
from __future__ import annotations

import numpy as np

from runtimes.artifact import Artifact
from runtimes.errors import RuntimeArtifactError


class OnnxRunner:
    """One InferenceSession with a fixed intra-op thread count (inter-op 1, sequential execution)."""

    def __init__(self, artifact: Artifact, threads: int = 1, optimization: str | None = None):
        import onnxruntime as ort
        config = dict((artifact.manifest.get("quant") or {}).get("runtime_options") or {})
        optimization = optimization or config.pop("edgevit.graph_optimization_level", "all")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[optimization]
        opts.log_severity_level = 3
        for key, value in config.items():
            opts.add_session_config_entry(key, str(value))
        try:
            self.session = ort.InferenceSession(str(artifact.entry), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 — ORT raises its own exception types
            raise RuntimeArtifactError(f"onnxruntime cannot load {artifact.entry}: {str(e).splitlines()[0]}") from e
        self.threads = threads
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(x, np.float32)})[0]
