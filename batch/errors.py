"""The batch package's errors.

Every error a transform job reports deliberately derives from :class:`BatchError`; its message is the
user-facing FailureReason (no traceback, no exception names).
"""

from __future__ import annotations

from typing import Any


class BatchError(Exception):
    """Base of every deliberate batch-transform error; ``str(err)`` is user-facing."""


class TransformRequestError(BatchError):
    """The CreateTransformJob request is invalid or inconsistent (a ValidationException upstream)."""


class InputError(BatchError):
    """The input data cannot be listed or read (missing prefix, unreadable manifest, bad gzip...)."""


class OutputError(BatchError):
    """The output location cannot be written."""


class ModelServerError(BatchError):
    """The model server could not be started or never became ready."""


class RecordError(BatchError):
    """A record the model rejected, or a record that cannot be processed.

    ``source`` is the input object's URI, ``line`` the 1-based line of the record in that object (set
    by the engine once it knows where the part starts), ``offset`` the record's byte offset in the
    (decompressed) object.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str,
        offset: int,
        line_in_part: int | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.source = source
        self.offset = offset
        self.line_in_part = line_in_part
        self.line = line

    def __reduce__(self) -> tuple[Any, ...]:
        # keyword-only arguments survive pickling between Dask workers and the client
        return (_rebuild_record_error, (self.message, self.source, self.offset, self.line_in_part, self.line))

    def reason(self) -> str:
        """The FailureReason text naming the object and the line."""
        where = f"line {self.line}" if self.line is not None else f"byte offset {self.offset}"
        return f"ClientError: {self.source}, {where}: {self.message}"


def _rebuild_record_error(
    message: str, source: str, offset: int, line_in_part: int | None, line: int | None
) -> RecordError:
    return RecordError(message, source=source, offset=offset, line_in_part=line_in_part, line=line)


class StoppedError(BatchError):
    """The job was asked to stop."""
