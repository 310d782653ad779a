"""The log files of `selfmaker up`: where they are and the form of their lines.

Every log the platform keeps is an append-only text file under ``--home/logs``:

* ``training-jobs/<job>.log``, ``transform-jobs/<job>.log``, ``processing-jobs/<job>.log`` — one file per
  job; a line of host N of a multi-host job carries ``[algo-N] `` after its time stamp (lines without one
  belong to ``algo-1``). A job kind may instead write one file per host, ``<kind>s/<job>/algo-N.log``;
* ``endpoints/<endpoint>/<instance>.log`` — one file per model-server instance, the instance id being
  ``<endpoint>-<variant>-<8 hex digits>``.

The platform's writers start each line with its UTC time, ``2026-01-31T12:00:00.123Z `` (:func:`stamp`),
so that the CloudWatch Logs view (:mod:`selfmaker.logstreams`) gives every event a time that does not
change from one read to the next; lines that a process writes straight into a file (a model server's
output) carry their own time (the model server's JSON lines start with ``{"ts":"…Z"``) or none, and then
take the time of the line before. ``selfmaker logs`` prints the files as they are. (An unmarked line whose
text itself starts with ``[algo-N] `` reads as host N's: job output never starts so unless a host wrote it.)
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass
from pathlib import Path

#: directories of job logs under ``logs/`` by job kind (the store's kind: the ARN resource type)
JOB_LOG_DIRS: dict[str, str] = {
    "training-job": "training-jobs",
    "transform-job": "transform-jobs",
    "processing-job": "processing-jobs",
}
#: the directory of endpoint instance logs under ``logs/``
ENDPOINT_LOG_DIR = "endpoints"

# the platform's stamp, then an optional host marker; the model server's JSON lines start with their time
_STAMPED = re.compile(rb"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{3})Z (?:\[algo-(\d+)\] )?")
_HOST_ONLY = re.compile(rb"\[algo-(\d+)\] ")
_JSON_TS = re.compile(rb'\{"ts":"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{3})Z"')


def stamp(line: str, when: float | None = None, host: str | None = None) -> str:
    """``line`` as a log file line: its UTC time (now unless ``when``), the host marker of a multi-host
    job (``host`` is ``algo-N``) and a final newline."""
    when = time.time() if when is None else when
    second = int(when)
    millis = min(999, int((when - second) * 1000))
    text = f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(second))}.{millis:03d}Z "
    if host:
        text += f"[{host}] "
    return text + (line if line.endswith("\n") else line + "\n")


@dataclass(frozen=True)
class LogLine:
    """One parsed line: its time in epoch milliseconds (None when the line carries none), the host number
    of its ``[algo-N]`` marker (None when unmarked) and the message (stamp and marker removed)."""

    timestamp: int | None
    host: int | None
    message: bytes


class LineParser:
    """Parses lines of one file; caches the conversion of the last second seen (lines come in order)."""

    def __init__(self) -> None:
        self._second_text = b""
        self._second_ms = 0

    def _millis(self, second: bytes, millis: bytes) -> int:
        if second != self._second_text:
            parsed = time.strptime(second.decode("ascii"), "%Y-%m-%dT%H:%M:%S")
            self._second_text, self._second_ms = second, calendar.timegm(parsed) * 1000
        return self._second_ms + int(millis)

    def time_and_host(self, line: bytes) -> tuple[int | None, int | None]:
        """:meth:`parse` without the message (what an index needs, at about half the cost)."""
        if line[:1].isdigit():
            match = _STAMPED.match(line)
            if match is not None:
                try:
                    stamp_ms = self._millis(match.group(1), match.group(2))
                except (ValueError, OverflowError):
                    pass  # not a real time: an ordinary line, as parse() reads it
                else:
                    return stamp_ms, int(match.group(3)) if match.group(3) else None
        elif line[:1] == b"{":
            parsed = self.parse(line)
            return parsed.timestamp, parsed.host
        elif line[:1] == b"[":
            match = _HOST_ONLY.match(line)
            if match is not None:
                return None, int(match.group(1))
        return None, None

    def parse(self, line: bytes) -> LogLine:
        """``line`` without its line end, split into time, host and message."""
        line = line.rstrip(b"\r\n")
        try:
            match = _STAMPED.match(line)
            if match is not None:
                host = int(match.group(3)) if match.group(3) else None
                return LogLine(self._millis(match.group(1), match.group(2)), host, line[match.end() :])
            match = _JSON_TS.match(line)
            if match is not None:
                return LogLine(self._millis(match.group(1), match.group(2)), None, line)
        except (ValueError, OverflowError):
            pass  # a stamp-like text that is no real time (month 13): an ordinary line
        match = _HOST_ONLY.match(line)
        if match is not None:  # a host marker without a stamp (logs written before stamps existed)
            return LogLine(None, int(match.group(1)), line[match.end() :])
        return LogLine(None, None, line)


def job_log_path(logs_dir: Path, kind: str, name: str) -> Path:
    """The one log file of job ``name`` of ``kind`` (``training-job`` …)."""
    return logs_dir / JOB_LOG_DIRS[kind] / f"{name}.log"


def job_host_logs(logs_dir: Path, kind: str, name: str) -> dict[int, Path]:
    """The per-host log files ``<kind>s/<name>/algo-N.log`` of a job that writes one file per host."""
    directory = logs_dir / JOB_LOG_DIRS[kind] / name
    found: dict[int, Path] = {}
    if directory.is_dir():
        for path in directory.glob("algo-*.log"):
            number = path.stem[len("algo-") :]
            if number.isdigit():
                found[int(number)] = path
    return found


def endpoint_log_dir(logs_dir: Path, endpoint: str) -> Path | None:
    """The directory of ``endpoint``'s instance logs (endpoint names compare case-insensitively)."""
    root = logs_dir / ENDPOINT_LOG_DIR
    exact = root / endpoint
    if exact.is_dir():
        return exact
    if root.is_dir():
        for directory in root.iterdir():
            if directory.is_dir() and directory.name.lower() == endpoint.lower():
                return directory
    return None


def instance_variant(endpoint: str, instance_id: str) -> str:
    """The variant name inside an instance id ``<endpoint>-<variant>-<8 hex>`` (the id itself when it has
    another form); a pipeline container's model server is ``<instance id>--<container hostname>``."""
    variant = _plain_instance_variant(endpoint, instance_id)
    if variant != instance_id or "--" not in instance_id:
        return variant
    # names may hold "--" too: the instance id is the shortest prefix ending before a "--" that parses
    start = 0
    while (found := instance_id.find("--", start)) != -1:
        base = instance_id[:found]
        variant = _plain_instance_variant(endpoint, base)
        if variant != base:
            return variant
        start = found + 1
    return instance_id


def _plain_instance_variant(endpoint: str, instance_id: str) -> str:
    head, _, tail = instance_id.rpartition("-")
    inside = head[: len(endpoint) + 1].lower() == endpoint.lower() + "-" and len(head) > len(endpoint) + 1
    if inside and len(tail) == 8 and not head.endswith("-"):  # a variant name never ends with "-"
        return head[len(endpoint) + 1 :]
    return instance_id
