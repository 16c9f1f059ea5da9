"""Errors the CLI turns into one-line messages (DESIGN.md: exit 2 for bad input, 1 for stage failures)."""


class UsageError(Exception):
    """Bad input from the user: the message names the fix. The CLI exits with code 2."""


class StageError(Exception):
    """A stage failed on valid input. The CLI exits with code 1."""
