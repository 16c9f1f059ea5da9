"""Exporters, executors and parity checks, one sub-package per runtime. Imports quant/, never edgevit.

Importing `runtimes` pulls in no torch: devices that only run artifacts (runtimes.runner,
runtimes.preprocess, runtimes.bench) need numpy, Pillow and the runtime itself.
"""
__all__ = ["export_onnx"]


def __getattr__(name):
    if name == "export_onnx":  # lazy: the exporter needs torch
        from runtimes.onnx.export import export_onnx
        return export_onnx
    raise AttributeError(name)
