"""Errors of the in-container training entry.

:class:`UserError` is the user's fault (bad hyperparameter, malformed data line); its message names the
field or the file and line and becomes ``ClientError: …`` in ``output/failure``. Anything else is an
algorithm/platform error.
"""

from __future__ import annotations


class TrainingError(Exception):
    """Base of the training entry's errors."""


class UserError(TrainingError):
    """Bad hyperparameter, channel or data: the message names what is wrong and where."""


class HyperparameterError(UserError):
    """A hyperparameter is missing, unknown or out of range; the message names it."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"Hyperparameter {name!r}: {message}")
        self.name = name


class DataError(UserError):
    """A data file is malformed; the message names the file and line."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
