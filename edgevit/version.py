"""The installed edgevit version, recorded in every manifest and report (a module of its own so stage modules
can read it without importing the package's public API)."""
__version__ = "0.1.0"
