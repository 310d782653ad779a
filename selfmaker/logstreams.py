"""The CloudWatch Logs view of the platform's log files: log groups, log streams and events, as SageMaker
names them.

=========================================  ==================================================================
log group                                  log streams
=========================================  ==================================================================
``/aws/sagemaker/TrainingJobs``            ``<job>/algo-N-<epoch>`` (host N, epoch = the job's creation time)
``/aws/sagemaker/TransformJobs``           the same, for transform jobs
``/aws/sagemaker/ProcessingJobs``          the same, for processing jobs
``/aws/sagemaker/Endpoints/<endpoint>``    ``<variant>/<instance id>``, one per model-server instance
=========================================  ==================================================================

Nothing is copied: the events are the lines of the files that ``selfmaker logs`` prints
(:mod:`selfmaker.logfiles` says where they are and how lines carry their time). Each file gets an index,
built as the file grows (offsets, times and hosts of its complete lines; a line still being written is
left for the next read), so a page of events is a seek and one read.

Tokens are opaque to clients: a direction and a byte offset (or, for FilterLogEvents, one offset per
stream), bound to the log group and stream they came from. A forward token at the end of a stream comes
back unchanged until new lines arrive (the SageMaker Python SDK's tail loop and ``aws logs tail`` rely on
it); FilterLogEvents answers without ``nextToken`` once everything matching was returned.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import heapq
import re
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import orjson

from selfmaker import logfiles, logrotate
from selfmaker.errors import InvalidParameterException, LogsResourceNotFound

if TYPE_CHECKING:
    from selfmaker.settings import PlatformSettings
    from selfmaker.state import StateStore

#: log groups of the job kinds, by the store's kind
JOB_GROUPS: dict[str, str] = {
    "training-job": "/aws/sagemaker/TrainingJobs",
    "transform-job": "/aws/sagemaker/TransformJobs",
    "processing-job": "/aws/sagemaker/ProcessingJobs",
}
P = ParamSpec("P")
T = TypeVar("T")
ENDPOINT_GROUP_PREFIX = "/aws/sagemaker/Endpoints/"
#: CloudWatch's cap of one GetLogEvents/FilterLogEvents answer, and what it counts per event
MAX_RESPONSE_BYTES = 1024 * 1024
EVENT_OVERHEAD_BYTES = 26
DEFAULT_EVENT_LIMIT = 10_000
DEFAULT_DESCRIBE_LIMIT = 50
_JOB_STREAM = re.compile(r"algo-(\d+)-(\d+)")
#: SageMaker's job and endpoint name pattern: a group's or stream's name part must be one before it names a
#: file or directory
_RESOURCE_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")
_BAD_TOKEN = "The specified nextToken is invalid."


@dataclass
class _HostLines:
    """Where one host's lines of a file are: start and end offsets and times (epoch ms), in file order."""

    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    stamps: list[int] = field(default_factory=list)
    #: the times never go back (the usual case): a time window is then found by bisection
    ordered: bool = True


class FileIndex:
    """The complete lines of one append-only log file and its rotated parts, indexed as the file grows.

    The platform rotates a large log by copy-and-truncate (:mod:`selfmaker.logrotate`: ``name.log.1`` is
    the newest part, ``name.log.N`` the oldest): the index reads the parts, oldest first, and then the live
    file as one run of bytes, so a stream keeps its older lines and a token (an offset in that run) stays
    good across a rotation; the bytes of parts that rotation dropped still count, so later offsets do not
    move. ``host`` fixes the host of every line (a per-host or per-instance file); otherwise a line belongs
    to the host of its ``[algo-N]`` marker, or to host 1. A line without a time takes the time of the line
    before it, the first ones ``base_ms``.
    """

    def __init__(self, path: Path, base_ms: int, host: int | None = None) -> None:
        self.path = path
        self.base_ms = base_ms
        self.fixed_host = host
        self._lock = threading.Lock()
        self.identity: tuple[int, int] | None = None
        #: the rotated parts indexed (identity and size, oldest first) and the bytes of those since dropped
        self._parts: list[tuple[tuple[int, int, int], int]] = []
        self._dropped = 0
        self._reset()

    def _reset(self) -> None:
        self.size = self._dropped  # the offset after the last indexed line
        self._live_base = self._dropped  # the offset of the live file's first byte
        #: (first offset, path) of each part and of the live file
        self._segments: list[tuple[int, Path]] = []
        self.hosts: dict[int, _HostLines] = {}
        self.last_stamp: int | None = None
        self.modified_ms = 0
        self._parser = logfiles.LineParser()

    def refresh(self) -> FileIndex:
        """Index the lines added since the last call (all again after a rotation or a new file)."""
        with self._lock:
            try:
                st = self.path.stat()
            except FileNotFoundError:
                self.identity, self._parts, self._dropped = None, [], 0
                self._reset()
                return self
            parts: list[tuple[Path, tuple[int, int, int], int]] = []
            newest = self.path.with_name(self.path.name + ".1")  # a rotation always leaves one
            for part in logrotate.rotated_parts(self.path) if newest.exists() else []:
                try:
                    part_st = part.stat()
                except FileNotFoundError:
                    continue  # dropped by a rotation right now: the next refresh sees the new set
                # the modification time too: a new part may reuse the inode of a part just dropped
                part_id = (part_st.st_dev, part_st.st_ino, part_st.st_mtime_ns)
                parts.append((part, part_id, part_st.st_size))
            identity = (st.st_dev, st.st_ino)
            seen = [(part_id, size) for _, part_id, size in parts]
            live_size = self.size - self._live_base
            if identity != self.identity or seen != self._parts or st.st_size < live_size:
                if identity == self.identity:  # rotated: the parts no longer there were the oldest
                    kept = {part_id for part_id, _ in seen}
                    for part_id, size in self._parts:
                        if part_id in kept:
                            break
                        self._dropped += size
                    # the live file starts after all that was read before, even if no part kept it
                    self._dropped += max(0, self.size - self._dropped - sum(size for _, size in seen))
                else:  # another file under the name (a new job of an old name): offsets start again
                    self._dropped = 0
                self.identity, self._parts = identity, seen
                self._reset()
                for part, _, size in parts:
                    self._segments.append((self.size, part))
                    self._scan(part, 0, size, final=True)
                self._live_base = self.size
                self._segments.append((self.size, self.path))
                live_size = 0
            self.modified_ms = int(st.st_mtime * 1000)
            if st.st_size > live_size:
                self._scan(self.path, live_size, st.st_size, final=False)
            return self

    def _scan(self, path: Path, start: int, stop: int, *, final: bool) -> None:
        """Index the lines of ``path``'s bytes [start, stop); a part's last line needs no newline (the
        part is complete), the live file's waits for it."""
        with open(path, "rb") as fh:
            fh.seek(start)
            data = fh.read(stop - start)
        end = len(data) if final else data.rfind(b"\n") + 1
        offset = self.size
        chunks = data[:end].split(b"\n")  # only \n ends a line (a \r progress bar does not)
        if chunks and not chunks[-1]:
            chunks.pop()  # the empty text after the last newline
        for raw in chunks:
            line_ms, line_host = self._parser.time_and_host(raw)
            if line_ms is not None:
                self.last_stamp = line_ms
            stamp = self.last_stamp if self.last_stamp is not None else self.base_ms
            host = self.fixed_host or line_host or 1
            lines = self.hosts.get(host)
            if lines is None:
                lines = self.hosts[host] = _HostLines()
            if lines.stamps and stamp < lines.stamps[-1]:
                lines.ordered = False
            lines.starts.append(offset)
            lines.ends.append(offset + len(raw))
            lines.stamps.append(stamp)
            offset += len(raw) + 1
        self.size += len(data) if final else end

    def _bytes(self, first: int, stop: int) -> bytes:
        """The indexed bytes [first, stop), read from the parts and the live file they lie in."""
        chunks = []
        bounds = [start for start, _ in self._segments[1:]] + [self.size]
        for (start, path), bound in zip(self._segments, bounds, strict=True):
            low, high = max(first, start), min(stop, bound)
            if low < high:
                with open(path, "rb") as fh:
                    fh.seek(low - start)
                    chunks.append(fh.read(high - low))
        return b"".join(chunks)

    def read(self, lines: _HostLines, positions: list[int]) -> list[str]:
        """The messages of the lines at ``positions`` (ascending) of ``lines`` (one read of their span)."""
        if not positions:
            return []
        first = lines.starts[positions[0]]
        span = self._bytes(first, lines.ends[positions[-1]])
        parser = logfiles.LineParser()
        return [
            parser.parse(span[lines.starts[p] - first : lines.ends[p] - first]).message.decode(
                "utf-8", errors="replace"
            )
            for p in positions
        ]


@dataclass(frozen=True)
class Stream:
    """One log stream: a host's lines of a file."""

    name: str
    index: FileIndex
    host: int
    created_ms: int

    @property
    def lines(self) -> _HostLines:
        return self.index.hosts.get(self.host) or _HostLines()


def _encode(payload: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(payload)).decode("ascii").rstrip("=")


def _decode(token: str) -> dict[str, Any]:
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise InvalidParameterException(_BAD_TOKEN) from None
    if not isinstance(payload, dict):
        raise InvalidParameterException(_BAD_TOKEN)
    return payload


def _check(*parts: str) -> int:
    return zlib.crc32("\0".join(parts).encode())


def _offset(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidParameterException(_BAD_TOKEN)
    return value


class FilterPattern:
    """A CloudWatch filter pattern for unstructured events: terms that must all appear (``ERROR``,
    ``"a phrase"``), ``?term``s of which one must appear, ``-term``s that must not, or ``%regex%``.
    JSON (``{ $.x = … }``) and space-delimited (``[a, b]``) patterns are refused."""

    _TERM = re.compile(r'\s*([?-]?)(?:"((?:[^"\\]|\\.)*)"|([^\s"]+))')

    def __init__(self, pattern: str | None) -> None:
        self.required: list[str] = []
        self.any_of: list[str] = []
        self.excluded: list[str] = []
        self.regex: re.Pattern[str] | None = None
        text = (pattern or "").strip()
        if text.startswith(("{", "[")):
            raise InvalidParameterException(
                'selfmaker supports filter patterns of terms (ERROR, "a phrase", ?either, -not) and '
                "%regular expressions% only; JSON and space-delimited patterns are not supported."
            )
        if len(text) >= 2 and text.startswith("%") and text.endswith("%"):
            try:
                self.regex = re.compile(text[1:-1])
            except re.error as exc:
                raise InvalidParameterException(
                    f"Invalid regular expression in filter pattern: {exc}"
                ) from None
            return
        position = 0
        while position < len(text):
            match = self._TERM.match(text, position)
            if match is None or match.end() == position:
                raise InvalidParameterException(
                    f"Invalid character(s) in term at position {position} of the pattern"
                )
            sign, quoted, bare = match.groups()
            term = quoted.replace('\\"', '"') if quoted is not None else bare
            {"?": self.any_of, "-": self.excluded, "": self.required}[sign].append(term)
            position = match.end()
            while position < len(text) and text[position].isspace():
                position += 1

    @property
    def everything(self) -> bool:
        """The pattern matches every event."""
        return self.regex is None and not (self.required or self.any_of or self.excluded)

    def matches(self, message: str) -> bool:
        """Whether ``message`` matches."""
        if self.regex is not None:
            return self.regex.search(message) is not None
        return (
            all(t in message for t in self.required)
            and not any(t in message for t in self.excluded)
            and (not self.any_of or any(t in message for t in self.any_of))
        )


class LogStreams:
    """Log groups, streams and events over the log files of one platform home."""

    def __init__(self, settings: PlatformSettings, store: StateStore) -> None:
        self.settings = settings
        self.store = store
        self._indexes: dict[Path, FileIndex] = {}
        self._lock = threading.Lock()
        self._serial = threading.Lock()

    def run(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``call(*args, **kwargs)`` (a method of this object) with no other running: the operations run
        in worker threads (file reads must not block the event loop) and share the indexes."""
        with self._serial:
            return call(*args, **kwargs)

    # ---- names ------------------------------------------------------------------------------------

    def group_name(self, name: str | None, identifier: str | None) -> str:
        """The log group of a request's ``logGroupName`` or ``logGroupIdentifier`` (a name or an ARN)."""
        if name and identifier:
            raise InvalidParameterException(
                "LogGroup name and LogGroup ARN are mutually exclusive parameters."
            )
        if identifier:
            if identifier.startswith("arn:"):
                _, _, rest = identifier.partition(":log-group:")
                if not rest:
                    raise InvalidParameterException(f"Invalid log group ARN: {identifier}")
                identifier = rest[:-2] if rest.endswith(":*") else rest
            return identifier
        if not name:
            raise InvalidParameterException("Either logGroupName or logGroupIdentifier must be specified.")
        return name

    def _arn(self, group: str, stream: str | None = None) -> str:
        arn = f"arn:aws:logs:{self.settings.region}:{self.settings.account_id}:log-group:{group}"
        return arn + (f":log-stream:{stream}" if stream is not None else "")

    def _index(self, path: Path, base_ms: int, host: int | None = None) -> FileIndex:
        with self._lock:
            index = self._indexes.get(path)
            if index is None:
                index = self._indexes[path] = FileIndex(path, base_ms, host)
        return index.refresh()

    # ---- groups -----------------------------------------------------------------------------------

    def _groups(self) -> list[tuple[str, Path]]:
        logs = self.settings.logs_dir
        found: list[tuple[str, Path]] = []
        for kind, group in JOB_GROUPS.items():
            directory = logs / logfiles.JOB_LOG_DIRS[kind]
            if directory.is_dir() and any(directory.iterdir()):
                found.append((group, directory))
        endpoints = logs / logfiles.ENDPOINT_LOG_DIR
        if endpoints.is_dir():
            for directory in endpoints.iterdir():
                if directory.is_dir():
                    found.append((ENDPOINT_GROUP_PREFIX + directory.name, directory))
        return sorted(found)

    def describe_log_groups(
        self, prefix: str | None, pattern: str | None, limit: int | None, token: str | None
    ) -> dict[str, Any]:
        """DescribeLogGroups: the groups in name order, by prefix or case-insensitive substring."""
        if prefix and pattern:
            raise InvalidParameterException(
                "LogGroup name prefix and LogGroup name pattern are mutually exclusive."
            )
        groups = [
            (name, path)
            for name, path in self._groups()
            if (not prefix or name.startswith(prefix)) and (not pattern or pattern.lower() in name.lower())
        ]
        start = self._page_start(token, "groups", "")
        page = groups[start : start + (limit or DEFAULT_DESCRIBE_LIMIT)]
        items = []
        for name, path in page:
            st = path.stat()
            stored = sum(f.stat().st_size for f in path.rglob("*.log"))
            items.append(
                {
                    "logGroupName": name,
                    "creationTime": int(st.st_ctime * 1000),
                    "metricFilterCount": 0,
                    "arn": self._arn(name) + ":*",
                    "logGroupArn": self._arn(name),
                    "storedBytes": stored,
                    "logGroupClass": "STANDARD",
                }
            )
        answer: dict[str, Any] = {"logGroups": items}
        if start + len(page) < len(groups):
            answer["nextToken"] = _encode({"k": "groups", "g": _check(""), "n": start + len(page)})
        return answer

    def _page_start(self, token: str | None, kind: str, group: str) -> int:
        if token is None:
            return 0
        payload = _decode(token)
        if payload.get("k") != kind or payload.get("g") != _check(group):
            raise InvalidParameterException(_BAD_TOKEN)
        return _offset(payload.get("n"))

    # ---- streams ----------------------------------------------------------------------------------

    def _job_streams(self, kind: str, job_prefix: str | None, job: str | None = None) -> list[Stream]:
        """The streams of the jobs of ``kind`` whose ``<job>/`` could start with ``job_prefix`` (or
        of ``job`` alone)."""
        logs = self.settings.logs_dir
        directory = logs / logfiles.JOB_LOG_DIRS[kind]
        if not directory.is_dir():
            return []
        names: set[str] = set()
        if job is not None:
            names.add(job)
        else:
            for entry in directory.iterdir():
                name = entry.name[: -len(".log")] if entry.name.endswith(".log") else entry.name
                if entry.is_dir() or entry.name.endswith(".log"):
                    head = name + "/"
                    if not job_prefix or head.startswith(job_prefix) or job_prefix.startswith(head):
                        names.add(name)
        streams: list[Stream] = []
        for name in sorted(names):
            record = self.store.get(kind, name)
            created_ms = int(record.created * 1000) if record is not None else None
            indexes: list[tuple[FileIndex, int | None]] = []
            single = logfiles.job_log_path(logs, kind, name)
            if single.is_file():
                indexes.append((self._index(single, created_ms or 0), None))
            for host, path in sorted(logfiles.job_host_logs(logs, kind, name).items()):
                indexes.append((self._index(path, created_ms or 0, host), host))
            for index, fixed in indexes:
                for number in sorted(index.hosts) if fixed is None else [fixed]:
                    lines = index.hosts.get(number)
                    if not lines or not lines.stamps:
                        continue  # a stream exists once its host wrote something, as on SageMaker
                    first = created_ms if created_ms is not None else lines.stamps[0]
                    stream_name = f"{name}/algo-{number}-{first // 1000}"
                    streams.append(Stream(stream_name, index, number, first))
        return streams

    def _endpoint_streams(self, directory: Path, endpoint: str) -> list[Stream]:
        streams = []
        for path in sorted(directory.glob("*.log")):
            index = self._index(path, int(path.stat().st_mtime * 1000), 1)
            lines = index.hosts.get(1)
            if not lines or not lines.stamps:
                continue
            variant = logfiles.instance_variant(endpoint, path.stem)
            streams.append(Stream(f"{variant}/{path.stem}", index, 1, lines.stamps[0]))
        return streams

    def streams(self, group: str, prefix: str | None = None) -> list[Stream]:
        """The streams of ``group`` whose names start with ``prefix``, in name order;
        ResourceNotFoundException for an unknown group."""
        kind = next((k for k, g in JOB_GROUPS.items() if g == group), None)
        found: list[Stream] | None = None
        if kind is not None:
            if (self.settings.logs_dir / logfiles.JOB_LOG_DIRS[kind]).is_dir():
                found = self._job_streams(kind, prefix)
        elif group.startswith(ENDPOINT_GROUP_PREFIX):
            endpoint = group[len(ENDPOINT_GROUP_PREFIX) :]
            if _RESOURCE_NAME.fullmatch(endpoint):  # an endpoint's name, never a path ("..")
                directory = logfiles.endpoint_log_dir(self.settings.logs_dir, endpoint)
                if directory is not None:
                    found = self._endpoint_streams(directory, directory.name)
        if found is None:
            raise LogsResourceNotFound("The specified log group does not exist.")
        return sorted((s for s in found if not prefix or s.name.startswith(prefix)), key=_name)

    def stream(self, group: str, name: str) -> Stream:
        """One stream of ``group``; ResourceNotFoundException for an unknown group or stream."""
        head, _, rest = name.partition("/")
        kind = next((k for k, g in JOB_GROUPS.items() if g == group), None)
        if kind is None:
            candidates = self.streams(group, head + "/")  # the endpoint's group, or not found
        else:
            if not (self.settings.logs_dir / logfiles.JOB_LOG_DIRS[kind]).is_dir():
                raise LogsResourceNotFound("The specified log group does not exist.")
            valid = _RESOURCE_NAME.fullmatch(head) and _JOB_STREAM.fullmatch(rest)
            candidates = self._job_streams(kind, None, head) if valid else []
        for stream in candidates:
            if stream.name == name:
                return stream
        raise LogsResourceNotFound("The specified log stream does not exist.")

    def describe_log_streams(
        self,
        group: str,
        prefix: str | None,
        order_by: str | None,
        descending: bool,
        limit: int | None,
        token: str | None,
    ) -> dict[str, Any]:
        """DescribeLogStreams: by name or by the time of the last event, a page at a time."""
        if order_by == "LastEventTime" and prefix:
            raise InvalidParameterException("Cannot order by LastEventTime with a logStreamNamePrefix.")
        streams = self.streams(group, prefix)
        if order_by == "LastEventTime":
            streams.sort(key=lambda s: (s.lines.stamps[-1], s.name))
        if descending:
            streams.reverse()
        start = self._page_start(token, "streams", group)
        page = streams[start : start + (limit or DEFAULT_DESCRIBE_LIMIT)]
        items = [
            {
                "logStreamName": s.name,
                "creationTime": s.created_ms,
                "firstEventTimestamp": s.lines.stamps[0],
                "lastEventTimestamp": s.lines.stamps[-1],
                "lastIngestionTime": max(s.lines.stamps[-1], s.index.modified_ms),
                "arn": self._arn(group, s.name),
                "storedBytes": 0,  # deprecated by CloudWatch, always 0 there too
            }
            for s in page
        ]
        answer: dict[str, Any] = {"logStreams": items}
        if start + len(page) < len(streams):  # only then: the SDK loops while nextToken is present
            answer["nextToken"] = _encode({"k": "streams", "g": _check(group), "n": start + len(page)})
        return answer

    # ---- events -----------------------------------------------------------------------------------

    def get_log_events(
        self,
        group: str,
        stream_name: str,
        start_time: int | None,
        end_time: int | None,
        token: str | None,
        limit: int | None,
        from_head: bool,
    ) -> dict[str, Any]:
        """GetLogEvents: a page of one stream's events, oldest first, with forward and backward tokens."""
        stream = self.stream(group, stream_name)
        lines = stream.lines
        check = _check(group, stream_name)
        limit = limit or DEFAULT_EVENT_LIMIT
        if token is not None:
            marker, _, body = token.partition("/")
            payload = _decode(body)
            direction = payload.get("d")
            if direction != marker or direction not in ("f", "b") or payload.get("s") != check:
                raise InvalidParameterException(_BAD_TOKEN)
            offset = _offset(payload.get("o"))
            if offset > stream.index.size:
                raise InvalidParameterException(_BAD_TOKEN)
            forward = direction == "f"
        else:
            forward = from_head
            offset = 0 if from_head else stream.index.size
        low, high, eligible = _window(lines, start_time, end_time)
        if forward:
            first = max(low, bisect.bisect_left(lines.starts, offset))
            chosen = _take(lines, eligible, first, high, limit, forward=True)
        else:
            last = min(high, bisect.bisect_left(lines.starts, offset))
            chosen = _take(lines, eligible, low, last, limit, forward=False)
        messages = stream.index.read(lines, chosen)
        events = [
            {"timestamp": lines.stamps[p], "message": m, "ingestionTime": lines.stamps[p]}
            for p, m in zip(chosen, messages, strict=True)
        ]
        if chosen:
            forward_offset, backward_offset = lines.ends[chosen[-1]], lines.starts[chosen[0]]
        else:  # nothing (new) there: the same tokens again, until lines arrive
            forward_offset = backward_offset = offset
        return {
            "events": events,
            "nextForwardToken": "f/" + _encode({"d": "f", "s": check, "o": forward_offset}),
            "nextBackwardToken": "b/" + _encode({"d": "b", "s": check, "o": backward_offset}),
        }

    def filter_log_events(
        self,
        group: str,
        stream_names: list[str] | None,
        prefix: str | None,
        start_time: int | None,
        end_time: int | None,
        pattern: str | None,
        token: str | None,
        limit: int | None,
    ) -> dict[str, Any]:
        """FilterLogEvents: the matching events of the group's streams (all, named, or by prefix),
        interleaved in time order; ``nextToken`` while more remain."""
        if stream_names and prefix:
            raise InvalidParameterException(
                "logStreamNames and logStreamNamePrefix are mutually exclusive parameters."
            )
        matcher = FilterPattern(pattern)
        if stream_names:
            streams = [self.stream(group, name) for name in dict.fromkeys(stream_names)]
        else:
            streams = self.streams(group, prefix)
        check = _check(group)
        positions: dict[str, int] = {}
        if token is not None:
            payload = _decode(token)
            raw = payload.get("p")
            if payload.get("k") != "filter" or payload.get("g") != check or not isinstance(raw, dict):
                raise InvalidParameterException(_BAD_TOKEN)
            positions = {str(name): _offset(value) for name, value in raw.items()}
        limit = limit or DEFAULT_EVENT_LIMIT
        events: list[dict[str, Any]] = []
        size = 0
        more = False
        cursors = [
            _Cursor(i, s, positions.get(s.name, 0), start_time, end_time, matcher)
            for i, s in enumerate(streams)
        ]
        heap = [(c.peek_key(), c.order) for c in cursors if c.peek_key() is not None]
        heapq.heapify(heap)
        while heap:
            _, order = heap[0]
            cursor = cursors[order]
            position, message = cursor.current()
            cost = len(message.encode()) + EVENT_OVERHEAD_BYTES
            if len(events) >= limit or (events and size + cost > MAX_RESPONSE_BYTES):
                more = True
                break
            size += cost
            lines = cursor.stream.lines
            events.append(
                {
                    "logStreamName": cursor.stream.name,
                    "timestamp": lines.stamps[position],
                    "message": message,
                    "ingestionTime": lines.stamps[position],
                    "eventId": f"{_check(group, cursor.stream.name):010d}{lines.starts[position]:020d}",
                }
            )
            positions[cursor.stream.name] = lines.ends[position]
            cursor.advance()
            key = cursor.peek_key()
            if key is None:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, (key, order))
        answer: dict[str, Any] = {
            "events": events,
            "searchedLogStreams": [{"logStreamName": s.name, "searchedCompletely": True} for s in streams],
        }
        if more:
            answer["nextToken"] = _encode({"k": "filter", "g": check, "p": positions})
        return answer


def _name(stream: Stream) -> str:
    return stream.name


def _window(
    lines: _HostLines, start_time: int | None, end_time: int | None
) -> tuple[int, int, list[bool] | None]:
    """The positions [low, high) that may fall in [start_time, end_time), and which of them do (None: all
    of them; always so when the times are ordered and the window is found by bisection)."""
    count = len(lines.stamps)
    if start_time is None and end_time is None:
        return 0, count, None
    if lines.ordered:
        low = bisect.bisect_left(lines.stamps, start_time) if start_time is not None else 0
        high = bisect.bisect_left(lines.stamps, end_time) if end_time is not None else count
        return low, max(low, high), None
    first = start_time if start_time is not None else -1
    stop = end_time if end_time is not None else 1 << 62
    return 0, count, [first <= s < stop for s in lines.stamps]


def _take(
    lines: _HostLines, eligible: list[bool] | None, first: int, stop: int, limit: int, *, forward: bool
) -> list[int]:
    """Up to ``limit`` eligible positions in [first, stop), within the answer's byte cap: the first ones
    going forward, the last ones going backward; ascending."""
    chosen: list[int] = []
    size = 0
    order: Iterable[int] = range(first, stop) if forward else range(stop - 1, first - 1, -1)
    for position in order:
        if eligible is not None and not eligible[position]:
            continue
        cost = lines.ends[position] - lines.starts[position] + EVENT_OVERHEAD_BYTES
        if len(chosen) >= limit or (chosen and size + cost > MAX_RESPONSE_BYTES):
            break
        size += cost
        chosen.append(position)
    return chosen if forward else chosen[::-1]


class _Cursor:
    """One stream's matching events from a byte offset on, for FilterLogEvents' merge."""

    #: lines read per batch
    BATCH = 1000

    def __init__(
        self,
        order: int,
        stream: Stream,
        offset: int,
        start_time: int | None,
        end_time: int | None,
        matcher: FilterPattern,
    ) -> None:
        self.order = order
        self.stream = stream
        lines = stream.lines
        low, self._stop, self._eligible = _window(lines, start_time, end_time)
        self._matcher = matcher
        self._next = max(low, bisect.bisect_left(lines.starts, offset))
        self._buffer: Iterator[tuple[int, str]] = iter(())
        self._current: tuple[int, str] | None = None
        self.advance()

    def advance(self) -> None:
        """Move to the next matching event (None at the end)."""
        self._current = next(self._buffer, None)
        lines = self.stream.lines
        while self._current is None and self._next < self._stop:
            stop = min(self._stop, self._next + self.BATCH)
            wanted = [p for p in range(self._next, stop) if self._eligible is None or self._eligible[p]]
            self._next = stop
            messages = self.stream.index.read(lines, wanted)
            batch = [(p, m) for p, m in zip(wanted, messages, strict=True) if self._matcher.matches(m)]
            self._buffer = iter(batch)
            self._current = next(self._buffer, None)

    def current(self) -> tuple[int, str]:
        assert self._current is not None
        return self._current

    def peek_key(self) -> tuple[int, int, int] | None:
        """The merge order of the current event: time, stream, offset."""
        if self._current is None:
            return None
        position = self._current[0]
        return (self.stream.lines.stamps[position], self.order, position)
