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
