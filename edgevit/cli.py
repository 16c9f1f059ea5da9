"""The `edgevit` command line: one click group, one sub-command per stage.

Stage commands live in `edgevit/commands/<stage>.py`, each exporting `COMMANDS`; add a module name
to `COMMAND_MODULES` to plug a new stage in. Errors follow DESIGN.md: bad input → one line, exit 2;
a failing stage → one line, exit 1; tracebacks only with `--debug` (or EDGEVIT_DEBUG=1).
"""
from __future__ import annotations

import importlib
import os
import signal
import sys
import traceback

import click

from edgevit.version import __version__
from edgevit.errors import StageError, UsageError

COMMAND_MODULES = ["zoo", "quantize", "export", "rewrite", "split", "stitch", "pipeline", "analyze", "hub", "sweep"]


class EdgevitGroup(click.Group):
    """A group that turns edgevit's exceptions into the exit codes of DESIGN.md."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except UsageError as e:
            _fail(ctx, e, 2)
        except FileNotFoundError as e:
            _fail(ctx, UsageError(f"file not found: {e.filename or e}"), 2)
        except StageError as e:
            _fail(ctx, e, 1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except Terminated:
            click.echo("terminated", err=True)
            ctx.exit(128 + signal.SIGTERM)
        except Exception as e:  # noqa: BLE001 — the last line of defence keeps the one-line promise
            _fail(ctx, StageError(f"{type(e).__name__}: {e}"), 1)


def _debug(ctx: click.Context) -> bool:
    return bool(ctx.find_root().params.get("debug")) or os.environ.get("EDGEVIT_DEBUG") == "1"


def _fail(ctx: click.Context, exc: Exception, code: int):
    if _debug(ctx):
        traceback.print_exception(exc)
    click.secho(f"error: {exc}", fg="red", err=True)
    ctx.exit(code)


@click.group(cls=EdgevitGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgevit")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def cli(debug: bool):
    """edgevit: take a trained vision backbone to artifacts that run on edge devices.

    \b
    Examples:
      edgevit models
      edgevit eval vit-small --data fashion-mnist
      edgevit quantize vit-small --fmt fp4 --bits w4a6 --out out/q
    """


def _register() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"edgevit.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"edgevit.commands.{name}":
                continue  # stage not built yet
            raise
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


class Terminated(BaseException):
    """SIGTERM as an exception (like KeyboardInterrupt for SIGINT), so every writer's `finally` removes
    its staging directory (`.NAME.*.partial`, `.NAME.tmp*`) before the process ends."""


def _raise_terminated(signum, frame):
    raise Terminated()


def main() -> None:
    signal.signal(signal.SIGTERM, _raise_terminated)
    cli(prog_name="edgevit")


if __name__ == "__main__":
    sys.exit(main())
