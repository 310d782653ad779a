"""Splitting input objects into records and mini-batches, streaming.

A *part* is a byte range ``[start, end)`` of an object. For ``SplitType=Line`` a part owns the records
that *start* inside its range: it skips the partial record at its beginning (the previous part finishes
it) and reads past ``end`` to finish its last record, so parts can be cut anywhere and still align on
record boundaries. Gzip, RecordIO, TFRecord and ``SplitType=None`` objects are one part each.

Empty lines are not records (they are skipped, but counted for line numbers).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO

from batch.errors import InputError, RecordError

READ_BYTES = 1024 * 1024
RECORDIO_MAGIC = 0xCED7230A


class CountingStream:
    """Wraps a binary stream and counts the raw bytes read from it."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self.count += len(data)
        return data

    def close(self) -> None:
        self._stream.close()


class GunzipStream:
    """Streaming gzip decompression of a non-seekable stream (multi-member files included)."""

    def __init__(self, stream: BinaryIO | CountingStream, source: str) -> None:
        self._stream = stream
        self._source = source
        self._dec = zlib.decompressobj(wbits=47)
        self._pending = b""
        self._eof = False

    def read(self, n: int = -1) -> bytes:
        want = READ_BYTES if n is None or n < 0 else n
        while len(self._pending) < want and not self._eof:
            raw = self._stream.read(READ_BYTES)
            try:
                if not raw:
                    self._pending += self._dec.flush()
                    if not self._dec.eof and self._dec.unconsumed_tail == b"":
                        raise InputError(f"{self._source}: truncated gzip data")
                    self._eof = True
                    break
                data = self._dec.decompress(raw)
                while self._dec.eof and self._dec.unused_data:
                    rest = self._dec.unused_data
                    self._dec = zlib.decompressobj(wbits=47)
                    data += self._dec.decompress(rest)
            except zlib.error as exc:
                raise InputError(f"{self._source}: not valid gzip data ({exc})") from None
            self._pending += data
        out, self._pending = self._pending[:want], self._pending[want:]
        return out

    def close(self) -> None:
        self._stream.close()


class LineRange:
    """The records of one part of a newline-delimited object.

    ``stream`` starts at byte ``start - 1`` when ``start > 0`` (one byte of look-behind tells whether
    ``start`` is a record boundary), else at 0. ``end=None`` reads to the end of the object.
    """

    def __init__(
        self,
        stream: BinaryIO | CountingStream | GunzipStream,
        *,
        source: str,
        start: int,
        end: int | None,
        max_record: int,
        read_size: int = READ_BYTES,
    ) -> None:
        self._stream = stream
        self.read_size = read_size
        self.source = source
        self.start = start
        self.end = end
        self.max_record = max_record

    def _skip_partial(self) -> int:
        """Consume the record that began before ``start``; return the offset of the first owned byte."""
        self._carry = b""
        if self.start == 0:
            return 0
        pos = self.start - 1
        while True:
            chunk = self._stream.read(self.read_size)
            if not chunk:
                return pos
            idx = chunk.find(b"\n")
            if idx >= 0:
                self._carry = chunk[idx + 1 :]
                return pos + idx + 1
            pos += len(chunk)

    def segments(self) -> Iterator[tuple[int, bytes]]:
        """``(offset, data)`` runs of whole lines (each ending in ``\\n``) owned by this part."""
        pos = self._skip_partial()
        if self.end is not None and pos >= self.end:
            return
        carry: bytes = self._carry
        while True:
            if carry and self.end is not None and pos + len(carry) >= self.end:
                k = carry.find(b"\n", max(0, self.end - 1 - pos))
                if k >= 0:
                    yield pos, carry[: k + 1]
                    return
            chunk = self._stream.read(self.read_size)
            if not chunk:
                if carry:
                    self._check_size(pos, carry)
                    yield pos, carry if carry.endswith(b"\n") else carry + b"\n"
                return
            data = carry + chunk if carry else chunk
            if self.end is not None and pos + len(data) >= self.end:
                k = data.find(b"\n", max(0, self.end - 1 - pos))
                if k >= 0:
                    self._check_size(pos, data[: k + 1])
                    yield pos, data[: k + 1]
                    return
                carry = data
                self._check_size(pos, carry)
                continue
            k = data.rfind(b"\n")
            if k < 0:
                carry = data
                self._check_size(pos, carry)
                continue
            yield pos, data[: k + 1]
            pos += k + 1
            carry = data[k + 1 :]

    def _check_size(self, pos: int, data: bytes) -> None:
        first = data.find(b"\n")
        length = len(data) if first < 0 else first
        if length > self.max_record:
            raise RecordError(
                f"record of more than {self.max_record} bytes exceeds MaxPayloadInMB",
                source=self.source,
                offset=pos,
            )

    def blocks(self, max_bytes: int) -> Iterator[tuple[int, bytes]]:
        """``(offset, data)`` of mini-batches of whole lines, each at most ``max_bytes`` long."""
        cur = bytearray()
        cur_off = 0
        for off, seg in self.segments():
            i = 0
            n = len(seg)
            while i < n:
                room = max_bytes - len(cur)
                if n - i <= room:
                    if not cur:
                        cur_off = off + i
                    cur += seg[i:] if i else seg
                    break
                k = seg.rfind(b"\n", i, i + room)
                if k < 0:
                    if cur:
                        yield cur_off, bytes(cur)
                        cur = bytearray()
                        continue
                    raise RecordError(
                        f"record of more than {max_bytes} bytes exceeds MaxPayloadInMB",
                        source=self.source,
                        offset=off + i,
                    )
                if not cur:
                    cur_off = off + i
                cur += seg[i : k + 1]
                yield cur_off, bytes(cur)
                cur = bytearray()
                i = k + 1
        if cur:
            yield cur_off, bytes(cur)

    def records(self) -> Iterator[tuple[int, bytes]]:
        """``(offset, record)`` of every non-empty line owned by this part (without its newline)."""
        for off, seg in self.segments():
            pos = 0
            for line in seg.split(b"\n")[:-1]:
                if line:
                    yield off + pos, line
                pos += len(line) + 1


def block_records(offset: int, block: bytes) -> list[tuple[int, bytes]]:
    """The non-empty lines of a block with their absolute offsets."""
    out = []
    pos = 0
    for line in block.split(b"\n"):
        if line:
            out.append((offset + pos, line))
        pos += len(line) + 1
    return out


def clean_block(block: bytes) -> tuple[bytes, int]:
    """``(body, records)``: the block without empty lines, and how many records it holds."""
    if block.startswith(b"\n") or b"\n\n" in block:
        lines = [line for line in block.split(b"\n") if line]
        return (b"\n".join(lines) + b"\n" if lines else b""), len(lines)
    return block, block.count(b"\n")


def iter_framed(
    stream: BinaryIO | CountingStream | GunzipStream, kind: str, source: str, max_record: int
) -> Iterator[tuple[int, bytes, bytes]]:
    """``(offset, stored, unpadded)`` of each RecordIO (MXNet) or TFRecord record of a whole object.

    ``stored`` is the record exactly as stored (header, data, RecordIO padding), ``unpadded`` the same
    without the RecordIO padding (what a SingleRecord request carries).
    """
    buf = b""
    pos = 0
    eof = False

    def need(n: int) -> bool:
        nonlocal buf, eof
        while len(buf) < n and not eof:
            chunk = stream.read(max(READ_BYTES, n - len(buf)))
            if not chunk:
                eof = True
                break
            buf += chunk
        return len(buf) >= n

    while True:
        if not need(1):
            return
        if kind == "RecordIO":
            if not need(8):
                raise RecordError("truncated RecordIO header", source=source, offset=pos)
            magic, lrec = struct.unpack("<II", buf[:8])
            if magic != RECORDIO_MAGIC:
                raise RecordError("not a RecordIO record (bad magic number)", source=source, offset=pos)
            length = lrec & ((1 << 29) - 1)
            header, padded = 8, (length + 3) & ~3
        else:
            if not need(12):
                raise RecordError("truncated TFRecord header", source=source, offset=pos)
            (length,) = struct.unpack("<Q", buf[:8])
            header, padded = 12, length + 4
        if length > max_record:
            raise RecordError(f"record of {length} bytes exceeds MaxPayloadInMB", source=source, offset=pos)
        if not need(header + padded):
            raise RecordError(f"truncated {kind} record", source=source, offset=pos)
        stored = buf[: header + padded]
        unpadded = buf[: header + length] if kind == "RecordIO" else stored
        yield pos, stored, unpadded
        buf = buf[header + padded :]
        pos += header + padded


def count_lines_before(read: Callable[[int], bytes], offset: int) -> int:
    """How many newlines the first ``offset`` bytes of a stream hold (``read(n)`` reads up to n bytes)."""
    count = 0
    remaining = offset
    while remaining > 0:
        data = read(min(READ_BYTES, remaining))
        if not data:
            break
        count += data.count(b"\n")
        remaining -= len(data)
    return count
