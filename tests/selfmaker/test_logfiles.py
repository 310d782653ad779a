"""The log line format (selfmaker/logfiles.py) and the file indexes and filter patterns behind the
CloudWatch Logs view (selfmaker/logstreams.py), on files written here."""

from __future__ import annotations

import calendar
import re
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from selfmaker.errors import InvalidParameterException, LogsResourceNotFound
from selfmaker.logfiles import LineParser, instance_variant, stamp
from selfmaker.logrotate import rotate
from selfmaker.logstreams import FileIndex, FilterPattern, LogStreams
from selfmaker.settings import PlatformSettings
from selfmaker.state import Record, StateStore

# text a line can hold: anything but its end (a "line" with a newline inside is two lines)
_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"))


@given(
    when=st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False),
    text=_TEXT,
    host=st.one_of(st.none(), st.integers(min_value=1, max_value=999).map(lambda n: f"algo-{n}")),
)
def test_a_stamped_line_parses_back_to_its_time_host_and_text(
    when: float, text: str, host: str | None
) -> None:
    # the one ambiguity, documented in selfmaker/logfiles.py: unmarked text that starts like a marker
    assume(host is not None or not re.match(r"\[algo-\d+\] ", text))
    line = stamp(text, when, host)
    assert line.endswith("\n") and line.count("\n") == 1
    parsed = LineParser().parse(line.encode())
    assert parsed.timestamp == int(when) * 1000 + min(999, int((when - int(when)) * 1000))
    assert parsed.host == (int(host.split("-")[1]) if host else None)
    assert parsed.message.decode() == text


def test_unstamped_lines_keep_their_text() -> None:
    parser = LineParser()
    for raw in (b"plain text", b"2026-13-45T99:99:99.000Z not a time", b"[algo-x] no host", b""):
        parsed = parser.parse(raw + b"\n")
        assert (parsed.timestamp, parsed.host, parsed.message) == (None, None, raw)
    model_server = b'{"ts":"2026-01-31T12:00:00.250Z","level":"INFO","msg":"ready"}'
    parsed = parser.parse(model_server + b"\r\n")
    expected = calendar.timegm(time.strptime("2026-01-31T12:00:00", "%Y-%m-%dT%H:%M:%S")) * 1000 + 250
    assert (parsed.timestamp, parsed.message) == (expected, model_server)  # its own time, text kept whole
    old = parser.parse(b"[algo-2] a line written before stamps existed\n")
    assert (old.timestamp, old.host, old.message) == (None, 2, b"a line written before stamps existed")


def _messages(index: FileIndex, host: int) -> list[str]:
    lines = index.hosts[host]
    return index.read(lines, list(range(len(lines.starts))))


def test_the_index_grows_with_the_file_and_waits_for_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "job.log"
    path.write_text("no time yet\n" + stamp("first", 1000.5, "algo-1") + stamp("second", 1001, "algo-2"))
    index = FileIndex(path, base_ms=7)
    index.refresh()
    assert _messages(index, 1) == ["no time yet", "first"] and _messages(index, 2) == ["second"]
    assert index.hosts[1].stamps == [7, 1_000_500] and index.hosts[2].stamps == [1_001_000]
    with open(path, "a") as out:
        out.write("carried over\n" + stamp("half", 1002)[:-1])  # the last line is still being written
    index.refresh()
    assert _messages(index, 1) == ["no time yet", "first", "carried over"]
    assert index.hosts[1].stamps[-1] == 1_001_000  # the time of the line before
    with open(path, "a") as out:
        out.write(" done\n")
    index.refresh()
    assert _messages(index, 1)[-1] == "half done" and index.hosts[1].stamps[-1] == 1_002_000
    # a file replaced (a job name used again after its home was cleaned) is indexed from scratch
    path.unlink()
    path.write_text(stamp("new life", 2000))
    index.refresh()
    assert list(index.hosts) == [1] and _messages(index, 1) == ["new life"]


def test_a_fixed_host_takes_every_line(tmp_path: Path) -> None:
    path = tmp_path / "algo-3.log"
    path.write_text(stamp("mine", 5, "algo-1") + "also mine\n")
    index = FileIndex(path, base_ms=0, host=3).refresh()
    assert list(index.hosts) == [3] and _messages(index, 3) == ["mine", "also mine"]


@pytest.mark.parametrize(
    ("pattern", "matching"),
    [
        ("", ["ERROR disk full", "WARN slow", 'INFO ok: "quoted"']),
        ("ERROR", ["ERROR disk full"]),
        ("ERROR full", ["ERROR disk full"]),
        ("ERROR empty", []),
        ('"disk full"', ["ERROR disk full"]),
        ("?ERROR ?WARN", ["ERROR disk full", "WARN slow"]),
        ("-ERROR", ["WARN slow", 'INFO ok: "quoted"']),
        ('"\\"quoted\\""', ['INFO ok: "quoted"']),
        ("%^(WARN|INFO) %", ["WARN slow", 'INFO ok: "quoted"']),
    ],
)
def test_filter_patterns(pattern: str, matching: list[str]) -> None:
    events = ["ERROR disk full", "WARN slow", 'INFO ok: "quoted"']
    assert [e for e in events if FilterPattern(pattern).matches(e)] == matching


@pytest.mark.parametrize("pattern", ['{ $.level = "ERROR" }', "[ip, user]", '"open', "%(%"])
def test_unsupported_or_broken_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(InvalidParameterException):
        FilterPattern(pattern)


def test_instance_ids_name_their_variant() -> None:
    assert instance_variant("my-ep", "my-ep-AllTraffic-0123abcd") == "AllTraffic"
    assert instance_variant("My-Ep", "my-ep-blue-green-0123abcd") == "blue-green"
    assert instance_variant("ep", "something-else") == "something-else"
    # a pipeline container's model server: <instance id>--<container hostname>; names may hold "--" too
    assert instance_variant("ep", "ep-AllTraffic-0123abcd--scaler") == "AllTraffic"
    assert instance_variant("ep", "ep-A-0123abcd--container-1") == "A"
    assert instance_variant("ep", "ep-A-0123abcd--deadbeef") == "A"
    assert instance_variant("ep--x", "ep--x-v--w-0123abcd--c--d") == "v--w"
    assert instance_variant("ep", "weird--x") == "weird--x"


def test_groups_page_and_follow_the_files(tmp_path: Path) -> None:
    """A group exists once its directory has a log; pages of one join into the whole list; a token of
    one listing is no token of another."""
    settings = PlatformSettings(home=tmp_path)
    store = StateStore(tmp_path / "state.db")
    try:
        view = LogStreams(settings, store)
        assert view.describe_log_groups(None, None, None, None) == {"logGroups": []}
        logs = settings.logs_dir
        (logs / "training-jobs").mkdir(parents=True)
        assert view.describe_log_groups(None, None, None, None) == {"logGroups": []}  # empty directory
        (logs / "training-jobs" / "a.log").write_text(stamp("hello", 10, "algo-1"))
        for endpoint in ("ep-one", "ep-two"):
            (logs / "endpoints" / endpoint).mkdir(parents=True)
        names, token = [], None
        for _ in range(10):
            page = view.describe_log_groups("/aws/sagemaker/", None, 1, token)
            names += [g["logGroupName"] for g in page["logGroups"]]
            token = page.get("nextToken")
            if token is None:
                break
        assert names == [
            "/aws/sagemaker/Endpoints/ep-one",
            "/aws/sagemaker/Endpoints/ep-two",
            "/aws/sagemaker/TrainingJobs",
        ]
        first = view.describe_log_groups(None, None, 1, None)["nextToken"]
        with pytest.raises(InvalidParameterException):
            view.describe_log_streams("/aws/sagemaker/TrainingJobs", None, None, False, 1, first)
        streams = view.describe_log_streams("/aws/sagemaker/TrainingJobs", None, None, False, None, None)
        # no job record: the epoch of the stream's name is its first line's
        assert [s["logStreamName"] for s in streams["logStreams"]] == ["a/algo-1-10"]
        empty = view.describe_log_streams("/aws/sagemaker/Endpoints/ep-one", None, None, False, None, None)
        assert empty == {"logStreams": []}
        (logs / "selfmaker.log").write_text(stamp("the platform's own log", 1))
        for name in ("..", ".", "ep-one/..", "../endpoints/ep-one"):  # names, never paths
            with pytest.raises(LogsResourceNotFound):
                view.streams(f"/aws/sagemaker/Endpoints/{name}")
    finally:
        store.close()


def test_a_forward_token_at_the_end_waits_for_new_lines(tmp_path: Path) -> None:
    """The tail loop of the SDK and the CLI: at the end the same token comes back with no events; once
    lines are appended (a half-written one excepted) that token returns exactly them."""
    settings = PlatformSettings(home=tmp_path)
    store = StateStore(tmp_path / "state.db")
    try:
        view = LogStreams(settings, store)
        path = settings.logs_dir / "transform-jobs" / "tail.log"
        path.parent.mkdir(parents=True)
        path.write_text("".join(stamp(f"line {i}", 100 + i) for i in range(3)))
        group, stream = "/aws/sagemaker/TransformJobs", "tail/algo-1-100"
        page = view.get_log_events(group, stream, None, None, None, None, True)
        assert [e["message"] for e in page["events"]] == ["line 0", "line 1", "line 2"]
        token = page["nextForwardToken"]
        for _ in range(2):
            again = view.get_log_events(group, stream, None, None, token, None, True)
            assert again["events"] == [] and again["nextForwardToken"] == token
        with open(path, "a") as out:
            out.write(stamp("line 3", 103) + stamp("line 4", 104) + "half")
        page = view.get_log_events(group, stream, None, None, token, None, True)
        got = [(e["timestamp"], e["message"]) for e in page["events"]]
        assert got == [(103_000, "line 3"), (104_000, "line 4")]
        token = page["nextForwardToken"]
        with open(path, "a") as out:
            out.write(" written\n")
        page = view.get_log_events(group, stream, None, None, token, None, True)
        assert [e["message"] for e in page["events"]] == ["half written"]  # its time: the line before's
        assert page["events"][0]["timestamp"] == 104_000
        # the backward token of that page leads to the lines before it
        back = view.get_log_events(group, stream, None, None, page["nextBackwardToken"], 2, True)
        assert [e["message"] for e in back["events"]] == ["line 3", "line 4"]
    finally:
        store.close()


@given(raw=st.binary(max_size=80), when=st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_the_index_reads_time_and_host_as_the_parser_does(raw: bytes, when: float) -> None:
    parser = LineParser()
    for line in (
        raw,
        stamp("x", when).encode() + raw,
        b"[algo-7] " + raw,
        b'{"ts":"2026-01-31T12:00:00.250Z"' + raw,
    ):
        parsed = parser.parse(line)
        assert parser.time_and_host(line.rstrip(b"\r\n")) == (parsed.timestamp, parsed.host)


def test_job_kinds_with_unstamped_lines_or_a_file_per_host(tmp_path: Path) -> None:
    """Lines with only a host marker (no time) take the job's creation time, which also names the
    streams; a job that writes ``<job>/algo-N.log`` files gets one stream per file."""
    settings = PlatformSettings(home=tmp_path)
    store = StateStore(tmp_path / "state.db")
    try:
        created = 1_700_000_000.25
        for name in ("marked", "split"):
            record = Record("processing-job", name, f"arn:{name}", "Completed", created, created, {})
            assert store.insert(record)
        jobs = settings.logs_dir / "processing-jobs"
        (jobs / "split").mkdir(parents=True)
        (jobs / "marked.log").write_text("[algo-2] two\n[algo-1] one\n[selfmaker] Completed\n")
        (jobs / "split" / "algo-1.log").write_text(stamp("first host", 1_700_000_001))
        (jobs / "split" / "algo-2.log").write_text("second host, no time\n")
        view = LogStreams(settings, store)
        group = "/aws/sagemaker/ProcessingJobs"
        streams = view.describe_log_streams(group, None, None, False, None, None)["logStreams"]
        assert [s["logStreamName"] for s in streams] == [
            "marked/algo-1-1700000000",
            "marked/algo-2-1700000000",
            "split/algo-1-1700000000",
            "split/algo-2-1700000000",
        ]
        events = view.filter_log_events(group, None, "marked/", None, None, None, None, None)["events"]
        assert [(e["logStreamName"][:13], e["timestamp"], e["message"]) for e in events] == [
            ("marked/algo-1", 1_700_000_000_250, "one"),
            ("marked/algo-1", 1_700_000_000_250, "[selfmaker] Completed"),
            ("marked/algo-2", 1_700_000_000_250, "two"),
        ]
        second = view.get_log_events(group, "split/algo-2-1700000000", None, None, None, None, True)
        assert [(e["timestamp"], e["message"]) for e in second["events"]] == [
            (1_700_000_000_250, "second host, no time")
        ]
    finally:
        store.close()


@settings(max_examples=60, deadline=None)
@given(
    stamps=st.lists(st.integers(min_value=0, max_value=20), min_size=1, max_size=40),
    start=st.one_of(st.none(), st.integers(min_value=0, max_value=21)),
    end=st.one_of(st.none(), st.integers(min_value=0, max_value=21)),
    limit=st.integers(min_value=1, max_value=7),
)
def test_pages_of_a_time_window_are_the_window(
    stamps: list[int], start: int | None, end: int | None, limit: int
) -> None:
    """Forward tokens, backward tokens and FilterLogEvents' tokens all return exactly the lines in
    [start, end), in file order, whether the times are ordered (bisection) or not (a scan)."""
    expected = [
        f"line {i}"
        for i, s in enumerate(stamps)
        if (start is None or s >= start) and (end is None or s < end)
    ]
    start_ms, end_ms = (None if t is None else t * 1000 for t in (start, end))
    with tempfile.TemporaryDirectory() as home:
        store = StateStore(Path(home) / "state.db")
        try:
            view = LogStreams(PlatformSettings(home=Path(home)), store)
            path = view.settings.logs_dir / "training-jobs" / "w.log"
            path.parent.mkdir(parents=True)
            path.write_text("".join(stamp(f"line {i}", s, "algo-1") for i, s in enumerate(stamps)))
            group = "/aws/sagemaker/TrainingJobs"
            stream = view.streams(group)[0].name
            forward, token = [], None
            for _ in range(100):
                page = view.get_log_events(group, stream, start_ms, end_ms, token, limit, True)
                forward += [e["message"] for e in page["events"]]
                if page["nextForwardToken"] == token:
                    break
                token = page["nextForwardToken"]
            assert forward == expected
            backward, token = [], None
            for _ in range(100):
                page = view.get_log_events(group, stream, start_ms, end_ms, token, limit, False)
                backward = [e["message"] for e in page["events"]] + backward
                if page["nextBackwardToken"] == token:
                    break
                token = page["nextBackwardToken"]
            assert backward == expected
            filtered, next_token = [], None
            for _ in range(100):
                answer = view.filter_log_events(group, None, None, start_ms, end_ms, None, next_token, limit)
                filtered += [e["message"] for e in answer["events"]]
                next_token = answer.get("nextToken")
                if next_token is None:
                    break
            assert filtered == expected  # one stream: its lines in file order
        finally:
            store.close()


def test_streams_keep_their_lines_and_tokens_across_rotations(tmp_path: Path) -> None:
    """The platform rotates a big log by copy-and-truncate (selfmaker/logrotate.py): the stream reads the
    rotated parts and the live file as one, a token taken before a rotation goes on after it (also once
    the oldest part was dropped), and every line comes exactly once."""
    settings = PlatformSettings(home=tmp_path)
    store = StateStore(tmp_path / "state.db")
    try:
        view = LogStreams(settings, store)
        assert store.insert(Record("training-job", "rot", "arn:rot", "InProgress", 1000.0, 1000.0, {}))
        path = settings.logs_dir / "training-jobs" / "rot.log"
        path.parent.mkdir(parents=True)
        group, stream = "/aws/sagemaker/TrainingJobs", "rot/algo-1-1000"
        written: list[str] = []

        def write(count: int) -> None:
            with open(path, "a") as out:
                for _ in range(count):
                    written.append(f"line {len(written)}")
                    out.write(stamp(written[-1], 1000 + len(written), "algo-1"))

        def drain(token: str | None) -> tuple[list[str], str | None]:
            got: list[str] = []
            for _ in range(200):
                page = view.get_log_events(group, stream, None, None, token, 3, True)
                got += [e["message"] for e in page["events"]]
                if page["nextForwardToken"] == token:
                    break
                token = page["nextForwardToken"]
            return got, token

        write(5)
        seen, token = drain(None)
        for keep in (2, 2, 2, 2):  # the third and fourth rotations drop the oldest part
            write(4)
            rotate(path, keep)
            write(3)
            more, token = drain(token)
            seen += more
        assert seen == written  # every line once, in order, through four rotations
        retained = [p.name for p in path.parent.glob("rot.log.*")]
        assert sorted(retained) == ["rot.log.1", "rot.log.2"]
        # from the head: the lines still on disk (the oldest part's were dropped), in order
        head, _ = drain(None)
        assert head == written[-len(head) :] and len(head) < len(written)
        assert head[-3:] == written[-3:]
    finally:
        store.close()
