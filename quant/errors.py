"""quant's own error type: callers (the edgevit CLI) map it to their usage error."""


class SpecError(ValueError):
    """A quantisation spec, format name, layer pattern or checkpoint that cannot work; the message names the fix."""
