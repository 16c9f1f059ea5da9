"""A user's YAML file (recipe, grid, devices), read with the one-line errors every command gives for it."""
from __future__ import annotations

from pathlib import Path

from edgevit.errors import UsageError


def read_yaml(path: str | Path, what: str = "", missing_hint: str = ""):
    """The parsed document, or a UsageError: `{what} {path} does not exist[; hint]` or `… is not valid YAML
    (its first error line)`."""
    import yaml
    name = f"{what} {path}".strip()
    try:
        return yaml.safe_load(Path(path).read_text())
    except (FileNotFoundError, IsADirectoryError):
        raise UsageError(f"{name} does not exist" + (f"; {missing_hint}" if missing_hint else "")) from None
    except yaml.YAMLError as e:
        raise UsageError(f"{name} is not valid YAML ({str(e).splitlines()[0]})") from None
