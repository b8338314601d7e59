"""User-facing errors: each says what was wrong, where, and what to do.

The CLI prints a :class:`LaserError` as one message (no traceback) and exits with status 2.
"""
from __future__ import annotations


class LaserError(Exception):
    """An error caused by the user's input or configuration (not a bug)."""


class InputError(LaserError):
    """Bad input data. ``where`` is ``file:line`` (or ``file:row N`` for Parquet)."""

    def __init__(self, where: str, problem: str, hint: str = "", key: str | None = None):
        self.where = where
        self.problem = problem
        self.hint = hint
        self.key = key
        msg = f"{where}: {problem}"
        if key is not None:
            msg += f" (key '{key}')"
        if hint:
            msg += f". {hint}"
        super().__init__(msg)

    def __reduce__(self):  # pickles (an engine's worker raises it to the driver) with its fields
        return (type(self), (self.where, self.problem, self.hint, self.key))


class ConfigError(LaserError):
    """A bad config key or value; the message names the file and key."""


class MissingScoreError(LaserError):
    """A strategy needs a score that no input column, score file or scorer provides."""


class ModelLoadError(LaserError):
    """A model could not be loaded (offline, wrong id or path)."""
