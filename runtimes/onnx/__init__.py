from runtimes.onnx.export import export_onnx

__all__ = ["export_onnx"]
