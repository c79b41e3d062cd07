"""Errors the CLI reports as one clear message and a non-zero exit, not a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad option, missing or corrupt file).

    The message names what is wrong and how to fix it; the CLI prints it and exits 2.
    """


class DataError(UserError):
    """A dataset file is missing, truncated, corrupt or of the wrong shape."""


class OutputError(UserError):
    """An output file or folder cannot be written (read-only or full disk, a file in the way)."""
