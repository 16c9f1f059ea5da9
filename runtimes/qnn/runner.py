"""Execute QNN artifacts on the HTP backend (emulated on x86 here, the NPU on a Snapdragon).

Same interface as OnnxRunner: float NCHW in, float logits out. The default graph is the QDQ entry,
compiled at load; `soc="SM8650"` runs that Snapdragon's precompiled context binary instead, i.e. the
exact on-device artifact. Graphs are static batch 1, so a batch of N is N runs.
"""
from __future__ import annotations

import numpy as np

from runtimes.artifact import Artifact
from runtimes.errors import RuntimeArtifactError
from runtimes.qnn.errors import QnnMissing


class QnnRunner:
    def __init__(self, artifact: Artifact, threads: int = 1, soc: str | None = None):
        from runtimes.qnn.compile import qnn_session
        path = artifact.entry
        if soc is not None:
            contexts = {c["soc"]: c for c in (artifact.manifest.get("qnn") or {}).get("contexts", [])}
            if soc.upper() not in contexts:
                raise RuntimeArtifactError(f"{artifact.root} has no context binary for {soc}; it has "
                                           f"{', '.join(contexts) or 'none'} (re-export with --soc {soc})")
            path = artifact.root / contexts[soc.upper()]["path"]
        try:
            self.session = qnn_session(path)
        except QnnMissing:
            raise
        except Exception as e:  # noqa: BLE001 — ORT raises its own exception types
            raise RuntimeArtifactError(f"QNN HTP cannot load {path}: {(str(e).splitlines() or ['?'])[0]}") from e
        self.threads = threads
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        self.input_shape = tuple(inp.shape)

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        if x.shape[1:] != self.input_shape[1:]:
            raise RuntimeArtifactError(f"input of shape {x.shape} does not fit the model's {self.input_shape}")
        run, name = self.session.run, self.input_name
        return np.concatenate([run([self.output_name], {name: x[i:i + 1]})[0] for i in range(len(x))])
