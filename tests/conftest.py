import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("EDGEVIT_TEST_THREADS", "2")))


@pytest.fixture(scope="session")
def fmnist_test():
    from edgevit.data.fashion_mnist import load_fashion_mnist
    return load_fashion_mnist("test")


@pytest.fixture
def cli_runner():
    from click.testing import CliRunner
    return CliRunner()


@pytest.fixture
def benchmark_module():
    """Load a script from benchmarks/ (not a package) as a module: `benchmark_module("readme_tables")`."""
    import importlib.util
    from pathlib import Path

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    return load
