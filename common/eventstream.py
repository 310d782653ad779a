"""The AWS event-stream wire format (``application/vnd.amazon.eventstream``), encoding side only.

InvokeEndpointWithResponseStream answers with a sequence of these messages; botocore decodes them into
``{"PayloadPart": {"Bytes": ...}}`` events. Each message: total length and headers length (big-endian
uint32), the CRC32 of those 8 bytes, the headers (name length uint8, name, type 7 = string, value
length uint16, value), the payload, and the CRC32 of everything before it.
"""

from __future__ import annotations

import struct
import zlib

CONTENT_TYPE = "application/vnd.amazon.eventstream"
_STRING = 7


def _headers(headers: dict[str, str]) -> bytes:
    out = bytearray()
    for name, value in headers.items():
        raw_name, raw_value = name.encode(), value.encode()
        out += (
            struct.pack("!B", len(raw_name))
            + raw_name
            + struct.pack("!BH", _STRING, len(raw_value))
            + raw_value
        )
    return bytes(out)


def message(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message."""
    encoded = _headers(headers)
    prelude = struct.pack("!II", 16 + len(encoded) + len(payload), len(encoded))
    body = prelude + struct.pack("!I", zlib.crc32(prelude)) + encoded + payload
    return body + struct.pack("!I", zlib.crc32(body))


def event(event_type: str, payload: bytes, content_type: str = "application/octet-stream") -> bytes:
    """An ``event`` message (e.g. ``PayloadPart`` carrying response bytes)."""
    return message(
        {":event-type": event_type, ":content-type": content_type, ":message-type": "event"}, payload
    )


def exception(exception_type: str, payload: bytes) -> bytes:
    """An ``exception`` message (``ModelStreamError``, ``InternalStreamFailure``) with a JSON payload."""
    return message(
        {
            ":exception-type": exception_type,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        payload,
    )
