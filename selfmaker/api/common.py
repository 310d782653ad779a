"""Helpers shared by the control-plane operation modules: timestamps, listing, pagination."""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from selfmaker.errors import SageMakerError, ValidationException
from selfmaker.state import Record


def compact(value: Any) -> Any:
    """``value`` without None members, recursively (SageMaker never sends ``null``)."""
    if isinstance(value, dict):
        return {k: compact(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [compact(v) for v in value]
    return value


def to_epoch(value: Any, member: str) -> float:
    """A request timestamp (epoch number or ISO-8601 text) as epoch seconds."""
    if isinstance(value, bool):
        raise ValidationException(f"Invalid timestamp at '{member}'")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValidationException(f"Invalid timestamp '{value}' at '{member}'")
        return float(value)
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                raise ValidationException(f"Invalid timestamp '{value}' at '{member}'") from None
            if not math.isfinite(number):
                raise ValidationException(f"Invalid timestamp '{value}' at '{member}'") from None
            return number
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.timezone.utc)
        return parsed.timestamp()
    raise ValidationException(f"Invalid timestamp at '{member}'")


def _bad_token() -> ValidationException:
    return ValidationException("Invalid pagination token: NextToken does not match this request.")


def encode_token(position: Any, fingerprint: str) -> str:
    """An opaque NextToken: where the next page starts (JSON data) in a listing with these filters."""
    raw = json.dumps({"p": position, "f": fingerprint}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_token(token: str, fingerprint: str) -> Any:
    """The position in ``token``; ValidationException when it is not ours or belongs to other filters."""
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        if data["f"] != fingerprint:
            raise ValueError
        return data["p"]
    except (ValueError, KeyError, TypeError):
        raise _bad_token() from None


def decode_offset(token: str, fingerprint: str) -> int:
    """A token holding a plain offset (``ListTags``)."""
    offset = decode_token(token, fingerprint)
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise _bad_token()
    return offset


SORT_KEYS: dict[str, Callable[[Record], Any]] = {
    "Name": lambda r: r.name.lower(),
    "CreationTime": lambda r: r.created,
    "Status": lambda r: (r.status or "").lower(),
    "LastModifiedTime": lambda r: r.modified,
}


def list_page(
    records: Sequence[Record],
    params: dict[str, Any],
    summarize: Callable[[Record], dict[str, Any]],
    *,
    default_order: str = "Descending",
    status_field: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Filter, sort and paginate ``records`` as SageMaker's List* operations do.

    Honours NameContains (case-insensitive), CreationTime/LastModifiedTime Before/After, StatusEquals,
    SortBy (default CreationTime), SortOrder, MaxResults (default 10, 1..100) and NextToken.
    """
    selected = list(records)
    name_contains = params.get("NameContains")
    if name_contains:
        needle = name_contains.lower()
        selected = [r for r in selected if needle in r.name.lower()]
    for member, attr, before in (
        ("CreationTimeBefore", "created", True),
        ("CreationTimeAfter", "created", False),
        ("LastModifiedTimeBefore", "modified", True),
        ("LastModifiedTimeAfter", "modified", False),
    ):
        if params.get(member) is not None:
            bound = to_epoch(params[member], member)
            selected = [
                r for r in selected if (getattr(r, attr) < bound if before else getattr(r, attr) > bound)
            ]
    if params.get("StatusEquals"):
        selected = [r for r in selected if r.status == params["StatusEquals"]]
    sort_by = params.get("SortBy") or "CreationTime"
    key = SORT_KEYS.get(sort_by, SORT_KEYS["CreationTime"])
    descending = (params.get("SortOrder") or default_order) == "Descending"
    selected.sort(key=lambda r: (key(r), r.name.lower()), reverse=descending)
    max_results = params.get("MaxResults") or 10
    fingerprint = json.dumps(
        {k: params.get(k) for k in sorted(params) if k not in {"NextToken", "MaxResults"}},
        sort_keys=True,
        default=str,
    )
    if params.get("NextToken"):
        # the token holds the sort position of the last record returned, not an offset: records deleted
        # (or created) between pages shift no one past the page boundary (a delete-while-listing loop)
        after = decode_token(params["NextToken"], fingerprint)
        try:
            last = (after[0], after[1])
            selected = [
                r
                for r in selected
                if ((key(r), r.name.lower()) < last if descending else (key(r), r.name.lower()) > last)
            ]
        except (TypeError, IndexError, KeyError):
            raise _bad_token() from None
    page = selected[:max_results]
    next_token = None
    if len(selected) > max_results:
        tail = page[-1]
        next_token = encode_token([key(tail), tail.name.lower()], fingerprint)
    return [summarize(r) for r in page], next_token


#: the body the authentication middleware read (to hash it), for the handler's :func:`read_limited`
BODY_KEY: web.RequestKey[bytes] = web.RequestKey("selfmaker_body", bytes)


async def read_limited(request: web.Request, limit: int, too_large: Callable[[], SageMakerError]) -> bytes:
    """The request body, or ``too_large()`` raised as soon as it passes ``limit`` bytes.

    Reads the stream itself (also chunked bodies without a Content-Length) instead of aiohttp's
    ``request.read()``, whose own size cap would surface as an unmapped HTTP 413 exception. A body the
    authentication middleware read already (:data:`BODY_KEY`) is checked and returned. The error closes
    the connection when answered (``close_connection``).
    """
    if BODY_KEY in request:
        body = request[BODY_KEY]
        if len(body) > limit:
            raise _closing(too_large())
        return body
    if request.content_length is not None and request.content_length > limit:
        raise _closing(too_large())
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            chunk = await request.content.readany()
        except ConnectionResetError:
            # the client went away mid-body: its mistake, answered (to no one) as a 400, not logged as ours
            raise _closing(
                ValidationException("The connection closed before the whole request body arrived.")
            ) from None
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise _closing(too_large())
        chunks.append(chunk)


def _closing(error: SageMakerError) -> SageMakerError:
    """``error`` answered with ``Connection: close``: the rest of the body stays unread."""
    error.close_connection = True
    return error
