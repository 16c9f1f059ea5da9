"""Exporters, executors and parity checks, one sub-package per runtime. Imports quant/, never edgevit."""
