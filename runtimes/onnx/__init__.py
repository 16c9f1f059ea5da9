"""ONNX runtime: export (torch needed) and execution with onnxruntime (no torch needed)."""
__all__ = ["export_onnx"]


def __getattr__(name):
    if name == "export_onnx":  # lazy: keeps `runtimes.onnx.runner` importable without torch
        from runtimes.onnx.export import export_onnx
        return export_onnx
    raise AttributeError(name)
