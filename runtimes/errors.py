"""Errors raised by runtimes/: ValueError subclasses the edgevit CLI turns into one-line messages."""


class RuntimeArtifactError(ValueError):
    """An artifact is missing, corrupt, or does not match its manifest (exit 2 at the CLI)."""


class ExportError(ValueError):
    """A model or quantisation spec cannot be expressed for the runtime asked for (exit 2 at the CLI)."""


class ParityError(RuntimeError):
    """The runtime's outputs disagree with the torch model beyond the manifest's thresholds (exit 1)."""


class ExportFailure(ExportError):
    """A valid model whose graph cannot be exported as asked: names the layer, the cause and the fallback
    (exit 1 at the CLI: a failure inside the stage, not bad input)."""
