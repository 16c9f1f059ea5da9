"""edgevit: from a trained vision backbone to artifacts that run on edge devices."""
__version__ = "0.1.0"
