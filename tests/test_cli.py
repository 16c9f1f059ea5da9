import pytest
import torch
from torch import nn

from edgevit import __version__
from edgevit.cli import cli


def run(runner, *args):
    result = runner.invoke(cli, list(args))
    return result.exit_code, result.output


def test_version(cli_runner):
    code, out = run(cli_runner, "--version")
    assert code == 0 and __version__ in out


def test_every_command_help_has_an_example(cli_runner):
    code, out = run(cli_runner, "--help")
    assert code == 0
    for name in cli.commands:
        code, out = run(cli_runner, name, "--help")
        assert code == 0 and "Example" in out, name


@pytest.mark.parametrize("args, message", [
    (("info", "no-such-model"), "unknown model"),
    (("eval", "vit-small", "--data", "imagenet"), "unknown data spec"),
    (("info", "torch.nn:Identity", "--weights", "/nonexistent/w.pt"), "does not exist"),
    (("train", "mobilenetv2"), "bundled model"),
])
def test_bad_input_is_one_line_exit_2(cli_runner, args, message):
    code, out = run(cli_runner, *args)
    assert code == 2, out
    assert message in out and "Traceback" not in out
    assert len(out.strip().splitlines()) == 1


def test_bad_option_is_exit_2(cli_runner):
    code, out = run(cli_runner, "eval", "vit-small", "--batch-size", "0")
    assert code == 2 and "batch-size" in out


def test_corrupt_checkpoint_exit_2_and_debug_traceback(cli_runner, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00not a checkpoint")
    code, out = run(cli_runner, "info", "torch.nn:Identity", "--weights", str(bad))
    assert code == 2 and "not a readable checkpoint" in out
    code, out = run(cli_runner, "--debug", "info", "torch.nn:Identity", "--weights", str(bad))
    assert code == 2 and "Traceback" in out


def test_pickled_module_refused_without_trust(cli_runner, tmp_path):
    path = tmp_path / "m.pt"
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), path)
    code, out = run(cli_runner, "info", str(path))
    assert code == 2 and "--trust-checkpoint" in out


def test_info_reports_params_and_macs(cli_runner, tmp_path):
    code, out = run(cli_runner, "info", "torch.nn:Identity", "--json")
    assert code == 0 and '"params": 0' in out
