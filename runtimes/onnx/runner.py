"""Execute ONNX artifacts with onnxruntime on the CPU."""
from __future__ import annotations

import numpy as np

from runtimes.artifact import Artifact
from runtimes.errors import RuntimeArtifactError
from runtimes.onnx.session import cpu_session, manifest_config


class OnnxRunner:
    """One InferenceSession (runtimes.onnx.session: the artifact's run-time options, exact int8 on any x86)."""

    def __init__(self, artifact: Artifact, threads: int = 1, optimization: str | None = None,
                 exact_int8: bool | None = None):
        try:
            self.session = cpu_session(artifact.entry, threads, manifest_config(artifact.manifest),
                                       optimization, exact_int8)
        except Exception as e:  # noqa: BLE001 — ORT raises its own exception types
            raise RuntimeArtifactError(f"onnxruntime cannot load {artifact.entry}: {str(e).splitlines()[0]}") from e
        self.threads = threads
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(x, np.float32)})[0]
