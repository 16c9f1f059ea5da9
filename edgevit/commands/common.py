"""Options and helpers shared by the stage commands."""
from __future__ import annotations

import functools
import sys

import click
from rich.console import Console
from rich.table import Table

# Piped or captured output (a log, `| grep`, a test) is never re-wrapped to an assumed 80 columns:
# messages stay on one line and tables take the width they need.
console = Console(stderr=False, soft_wrap=True, width=None if sys.stdout.isatty() else 240)


def model_options(f):
    """MODEL argument plus --weights / --trust-checkpoint, resolved by the registry."""
    @click.argument("model")
    @click.option("--weights", type=click.Path(dir_okay=False), default=None,
                  help="State dict (.pt/.safetensors) for timm:<arch> or module:factory models.")
    @click.option("--trust-checkpoint", is_flag=True,
                  help="Allow loading a pickled nn.Module (.pt); unpickling runs code, so only for files you trust.")
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        return f(*args, **kwargs)
    return wrapper


def overwrite_option(param: str = "overwrite"):
    """`--overwrite`: replace a non-empty --out. One spelling on every command; `--force`, which quantize and
    analyze used to say, stays accepted as a hidden alias. The command receives it as `param`."""
    def decorate(f):
        @click.option("--overwrite", "_overwrite", is_flag=True, help="Replace an existing non-empty --out.")
        @click.option("--force", "_force", is_flag=True, hidden=True)
        @functools.wraps(f)
        def wrapper(*args, _overwrite: bool, _force: bool, **kwargs):
            return f(*args, **{param: _overwrite or _force}, **kwargs)
        return wrapper
    return decorate


def load(model: str, weights: str | None, trust_checkpoint: bool):
    from edgevit.models.registry import load_model
    return load_model(model, weights, trust_checkpoint)


def print_table(title: str, columns: list[str], rows: list[list]) -> None:
    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="left" if c == columns[0] else "right")
    for r in rows:
        table.add_row(*[str(v) for v in r])
    console.print(table)
