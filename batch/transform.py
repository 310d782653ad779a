"""Transforming one part: records → mini-batches → model → assembled, joined, filtered output bytes.

This module runs on Dask workers but knows nothing of Dask: it gets an invoker, an atomic writer, a
stop check and a progress callback. Requests are pipelined (up to MaxConcurrentTransforms in flight)
while the answers are written strictly in input order.
"""

from __future__ import annotations

import csv
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson

from batch import storage
from batch.errors import InputError, RecordError, StoppedError
from batch.invoke import InvocationFailed, Invoker, Rejected
from batch.records import CountingStream, GunzipStream, LineRange, block_records, clean_block, iter_framed
from batch.request import TransformSpec


@dataclass(frozen=True)
class PartSpec:
    """One unit of work: bytes ``[start, end)`` of input object ``file_index`` (``end=None``: to EOF)."""

    file_index: int
    part_index: int
    uri: str
    start: int
    end: int | None
    size: int


@dataclass
class PartOutcome:
    """What a part produced."""

    records: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


@dataclass
class _Item:
    """One request: its body, where it starts, how many records, and the records when filtering."""

    offset: int
    body: bytes
    count: int
    records: list[tuple[int, bytes]] | None = None
    singles: list[tuple[int, bytes]] | None = field(default=None)
    #: the raw block of a fast-path mini-batch; its records are only split out if the model rejects it
    block: bytes | None = None

    def single_records(self) -> list[tuple[int, bytes]]:
        """The records to re-send one by one when the mini-batch is rejected."""
        if self.singles is None and self.block is not None:
            self.singles = block_records(self.offset, self.block)
        return self.singles or []


# -- CSV / JSON record helpers -------------------------------------------------------------------------


def parse_csv_line(line: bytes) -> list[str]:
    """The fields of one CSV line (quotes honoured)."""
    text = line.decode("utf-8").rstrip("\r")
    if '"' not in text:
        return text.split(",")
    return next(csv.reader([text]))


def csv_field(value: Any) -> str:
    """One value as a CSV field (quoted when needed)."""
    if isinstance(value, str):
        text = value
    elif value is None:
        text = ""
    elif isinstance(value, (bool, int, float)):
        text = orjson.dumps(value).decode()
    else:
        text = orjson.dumps(value).decode()
    if any(ch in text for ch in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def serialize(value: Any, kind: str) -> bytes:
    """A record value as one line of ``kind`` (csv: array → fields; json: the JSON text)."""
    if kind == "csv":
        if isinstance(value, list):
            return ",".join(csv_field(v) for v in value).encode()
        return csv_field(value).encode()
    return orjson.dumps(value)


def parse_record(line: bytes, kind: str) -> Any:
    """A CSV line as its array of fields, a JSON line as its value."""
    if kind == "csv":
        return parse_csv_line(line)
    return orjson.loads(line)


def _parse_output_value(line: bytes, kind: str) -> Any:
    """A model answer line as a JSON value (for JSON joins)."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        pass
    if kind == "csv" or b"," in line:
        fields = parse_csv_line(line)
        values: list[Any] = []
        for text in fields:
            try:
                values.append(orjson.loads(text))
            except orjson.JSONDecodeError:
                values.append(text)
        return values[0] if len(values) == 1 else values
    return line.decode("utf-8", "replace")


def _split_json_answer(answer: bytes, count: int) -> list[bytes] | None:
    """Per-record outputs of one JSON answer for ``count`` records.

    ``[r1, r2, ...]`` or an object whose only array member has one entry per record (``{"predictions":
    [...]}``, what linear-learner and xgboost answer) is split into its entries; None otherwise.
    """
    try:
        value = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return None
    if isinstance(value, dict):
        arrays = [v for v in value.values() if isinstance(v, list)]
        if len(value) != 1 or len(arrays) != 1:
            return None
        value = arrays[0]
    if isinstance(value, list) and len(value) == count:
        return [orjson.dumps(entry) for entry in value]
    return None


# -- the part transformer ------------------------------------------------------------------------------


class PartTransformer:
    """Transforms one part with ``invoker``, writing the assembled bytes to ``write``."""

    def __init__(
        self,
        spec: TransformSpec,
        part: PartSpec,
        invoker: Invoker,
        *,
        should_stop: Callable[[], bool] = lambda: False,
        on_progress: Callable[[int, int], None] = lambda records, nbytes: None,
    ) -> None:
        self.spec = spec.resolved()
        self.part = part
        self.invoker = invoker
        self.should_stop = should_stop
        self.on_progress = on_progress
        self.outcome = PartOutcome()
        self._raw: CountingStream | None = None
        self._reported_bytes = 0
        self._in_path = self.spec.input_path()
        self._out_path = self.spec.output_path_filter()

    # ---- reading -------------------------------------------------------------------------------------

    def _open(self) -> Any:
        part = self.part
        look_behind = part.start - 1 if part.start > 0 else 0
        raw = CountingStream(storage.open_range(part.uri, look_behind))
        self._raw = raw
        if self.spec.compression == "Gzip":
            return GunzipStream(raw, part.uri)
        return raw

    def _items(self, stream: Any) -> Iterator[_Item]:
        spec = self.spec
        limit = spec.payload_limit()
        multi = spec.batch_strategy == "MultiRecord"
        source = self.part.uri
        if spec.split_type == "None":
            cap = None if spec.max_payload_mb == 0 else limit
            chunks: list[bytes] = []
            total = 0
            while True:
                data = stream.read(1024 * 1024)
                if not data:
                    break
                total += len(data)
                if cap is not None and total > cap:
                    raise RecordError(
                        f"the object of more than {cap} bytes exceeds MaxPayloadInMB "
                        "(use SplitType Line or a larger MaxPayloadInMB)",
                        source=source,
                        offset=0,
                    )
                chunks.append(data)
            body = b"".join(chunks)
            if body:
                yield _Item(0, body, 1)
            return
        if spec.split_type in ("RecordIO", "TFRecord"):
            batch: list[tuple[int, bytes, bytes]] = []
            size = 0
            for framed in iter_framed(stream, spec.split_type, source, limit):
                if not multi:
                    yield _Item(framed[0], framed[2], 1, singles=[(framed[0], framed[2])])
                    continue
                if batch and size + len(framed[1]) > limit:
                    yield self._framed_item(batch)
                    batch, size = [], 0
                batch.append(framed)
                size += len(framed[1])
            if batch:
                yield self._framed_item(batch)
            return
        lines = LineRange(stream, source=source, start=self.part.start, end=self.part.end, max_record=limit)
        if spec.record_processing:
            yield from self._filtered_items(lines, limit, multi)
        elif multi:
            for offset, block in lines.blocks(limit):
                body, count = clean_block(block)
                if count:
                    yield _Item(offset, body, count, records=None, block=block)
        else:
            for offset, record in lines.records():
                yield _Item(offset, record, 1)

    @staticmethod
    def _framed_item(batch: list[tuple[int, bytes, bytes]]) -> _Item:
        return _Item(
            batch[0][0], b"".join(r[1] for r in batch), len(batch), singles=[(r[0], r[2]) for r in batch]
        )

    def _model_input(self, offset: int, line: bytes) -> bytes:
        if self._in_path.is_root:
            return line
        try:
            return serialize(
                self._in_path.apply(parse_record(line, self.spec.input_kind)), self.spec.input_kind
            )
        except (ValueError, UnicodeDecodeError, csv.Error) as exc:
            raise RecordError(
                f"InputFilter {self.spec.input_filter!r} cannot be applied: {exc}",
                source=self.part.uri,
                offset=offset,
            ) from None

    def _filtered_items(self, lines: LineRange, limit: int, multi: bool) -> Iterator[_Item]:
        records: list[tuple[int, bytes]] = []
        inputs: list[tuple[int, bytes]] = []
        size = 0
        for offset, line in lines.records():
            model_input = self._model_input(offset, line)
            if not multi:
                yield _Item(offset, model_input, 1, records=[(offset, line)], singles=[(offset, model_input)])
                continue
            if records and size + len(model_input) + 1 > limit:
                yield _Item(
                    records[0][0], b"\n".join(i for _, i in inputs) + b"\n", len(records), records, inputs
                )
                records, inputs, size = [], [], 0
            records.append((offset, line))
            inputs.append((offset, model_input))
            size += len(model_input) + 1
        if records:
            yield _Item(
                records[0][0], b"\n".join(i for _, i in inputs) + b"\n", len(records), records, inputs
            )

    # ---- invoking ------------------------------------------------------------------------------------

    def _invoke(self, item: _Item) -> bytes:
        spec = self.spec
        try:
            return self.invoker.invoke(item.body, spec.content_type, spec.accept)
        except Rejected as exc:
            if item.count > 1:
                self._find_rejected(item)
            raise RecordError(
                f"the model rejected the record (HTTP {exc.status}): {exc.message}",
                source=self.part.uri,
                offset=item.offset,
            ) from None
        except InvocationFailed as exc:
            raise RecordError(str(exc), source=self.part.uri, offset=item.offset) from None

    def _find_rejected(self, item: _Item) -> None:
        """Send the records of a rejected mini-batch one by one to name the first bad one."""
        spec = self.spec
        suffix = b"\n" if spec.split_type == "Line" else b""
        for offset, record in item.single_records():
            if self.should_stop():
                raise StoppedError("stopped")
            try:
                self.invoker.invoke(record + suffix, spec.content_type, spec.accept)
            except Rejected as exc:
                raise RecordError(
                    f"the model rejected the record (HTTP {exc.status}): {exc.message}",
                    source=self.part.uri,
                    offset=offset,
                ) from None
            except InvocationFailed as exc:
                raise RecordError(str(exc), source=self.part.uri, offset=offset) from None

    # ---- assembling ----------------------------------------------------------------------------------

    def _assemble(self, item: _Item, answer: bytes) -> bytes:
        spec = self.spec
        if item.records is None:
            if spec.assemble_with == "Line" and not answer.endswith(b"\n"):
                return answer + b"\n"
            return answer
        outputs = [line for line in answer.split(b"\n") if line.strip()]
        if len(outputs) != item.count:
            split = _split_json_answer(answer, item.count)
            if split is not None:
                outputs = split
            elif item.count == 1 and answer.strip():
                outputs = [answer.strip()]
            else:
                raise RecordError(
                    f"the model answered {len(outputs)} line(s) for {item.count} record(s); with "
                    "JoinSource or OutputFilter the model must answer one line per record "
                    "(Accept text/csv or application/jsonlines)",
                    source=self.part.uri,
                    offset=item.offset,
                )
        pieces: list[bytes] = []
        sep = b"\n" if spec.assemble_with == "Line" else b""
        join = spec.join_source == "Input"
        out_root = self._out_path.is_root
        for (offset, line), output in zip(item.records, outputs, strict=True):
            if not join and out_root:
                pieces.append(output.rstrip(b"\r") + sep)
                continue
            try:
                if join:
                    kind = spec.input_kind
                    if kind == "csv":
                        extra = parse_csv_line(output) if spec.output_kind == "csv" else [output.decode()]
                        value: Any = parse_csv_line(line) + extra
                    else:
                        source = orjson.loads(line)
                        result = _parse_output_value(output, spec.output_kind)
                        if isinstance(source, dict):
                            value = dict(source)
                            value["SageMakerOutput"] = result
                        else:
                            value = {"SageMakerInput": source, "SageMakerOutput": result}
                else:
                    kind = spec.output_kind if spec.output_kind != "other" else spec.input_kind
                    value = parse_record(output, kind) if kind == "csv" else _parse_output_value(output, kind)
                if not out_root:
                    value = self._out_path.apply(value)
            except (ValueError, UnicodeDecodeError, csv.Error) as exc:
                raise RecordError(
                    f"cannot join/filter the record: {exc}", source=self.part.uri, offset=offset
                ) from None
            pieces.append(serialize(value, kind) + sep)
        return b"".join(pieces)

    # ---- driving -------------------------------------------------------------------------------------

    def _progress(self, records: int) -> None:
        raw = self._raw.count if self._raw is not None else 0
        consumed = min(raw, self.part.size)
        delta = consumed - self._reported_bytes
        self._reported_bytes = consumed
        self.outcome.records += records
        self.on_progress(records, max(0, delta))

    def run(self, write: Callable[[bytes], None], concurrency: int | None = None) -> PartOutcome:
        """Transform the part, writing assembled bytes in order; returns the counts.

        Raises :class:`RecordError` (a bad record, naming its offset), :class:`StoppedError`,
        :class:`~batch.errors.InputError`.
        """
        width = max(1, concurrency or self.spec.max_concurrent or 1)
        stream = self._open()
        pending: deque[tuple[_Item, Future[bytes]]] = deque()
        pool = ThreadPoolExecutor(max_workers=width, thread_name_prefix="batch-invoke")
        try:
            for item in self._items(stream):
                if self.should_stop():
                    raise StoppedError("stopped")
                pending.append((item, pool.submit(self._invoke, item)))
                while len(pending) > width:
                    self._drain_one(pending, write)
            while pending:
                self._drain_one(pending, write)
        except UnicodeDecodeError as exc:
            raise InputError(f"{self.part.uri}: not valid UTF-8 ({exc})") from None
        finally:
            for _, future in pending:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            stream.close()
        final = self.part.size - self._reported_bytes
        if final > 0:
            self._reported_bytes = self.part.size
            self.on_progress(0, final)
        self.outcome.bytes_in = self.part.size
        return self.outcome

    def _drain_one(self, pending: deque[tuple[_Item, Future[bytes]]], write: Callable[[bytes], None]) -> None:
        item, future = pending.popleft()
        data = self._assemble(item, future.result())
        if data:
            write(data)
            self.outcome.bytes_out += len(data)
        self._progress(item.count)
