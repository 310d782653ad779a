"""Hypothesis strategies for fuzzing the APIs, built from botocore's service models, and the checks every
fuzzed answer must pass (tests/acceptance/test_fuzz.py).

:func:`value_for` draws a value for a botocore shape that is well typed most of the time and otherwise
broken the ways a careless or hostile client breaks it: wrong JSON types, strings past their maximum length,
numbers out of range, members missing, unknown members, random unicode. :func:`raw_body` turns a request
document into bytes, sometimes mis-encoded (not JSON, not UTF-8, a JSON array, truncated).
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from botocore.model import Shape
from hypothesis import strategies as st

#: requests sent by the whole fuzz suite (split between its targets); CI runs the default, the issue's
#: full run is SELFMAKER_FUZZ_REQUESTS=10500
FUZZ_REQUESTS = int(os.environ.get("SELFMAKER_FUZZ_REQUESTS", "2400"))

#: what no answer may contain: a Python traceback or a source line of one
TRACEBACK_MARKERS = (b"Traceback (most recent call last)", b'File "/', b'.py", line ')

_WRONG = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def _string(shape: Shape) -> st.SearchStrategy[Any]:
    enum = shape.enum
    maximum = shape.metadata.get("max")
    options: list[st.SearchStrategy[Any]] = [st.text(max_size=min(int(maximum or 64), 64))]
    if enum:
        options += [st.sampled_from(list(enum))] * 3
    if maximum is not None and int(maximum) < 100_000:
        options.append(st.integers(int(maximum) + 1, int(maximum) + 50).map(lambda n: "x" * n))  # too long
    options.append(
        st.sampled_from(["", " ", "\x00", "é" * 3, "../../etc/passwd", "file:///etc/hosts", "a" * 300])
    )
    return st.one_of(*options)


def _number(shape: Shape) -> st.SearchStrategy[Any]:
    low, high = shape.metadata.get("min"), shape.metadata.get("max")
    if shape.type_name in ("integer", "long"):
        lo = int(low) - 3 if low is not None else -(2**40)
        hi = int(high) + 3 if high is not None else 2**40
        return st.one_of(st.integers(lo, hi), st.integers(-(2**70), 2**70))
    return st.floats(allow_nan=False, allow_infinity=False)


def well_typed(shape: Shape, depth: int = 0) -> st.SearchStrategy[Any]:
    """A value of ``shape``'s JSON type (its content may still break the shape's constraints)."""
    kind = shape.type_name
    if kind == "structure":
        if depth > 2:
            return st.just({})
        members = shape.members
        required = sorted(shape.required_members)
        full = st.fixed_dictionaries(
            {name: value_for(members[name], depth + 1) for name in required},
            optional={
                **{
                    name: value_for(member, depth + 1)
                    for name, member in members.items()
                    if name not in required
                },
                "UnknownMember": _WRONG,
            },
        )
        if not required:
            return full
        # sometimes without some of the required members
        return st.tuples(full, st.sets(st.sampled_from(required), max_size=2)).map(
            lambda drawn: {k: v for k, v in drawn[0].items() if k not in drawn[1]}
        )
    if kind == "list":
        return st.lists(value_for(shape.member, depth + 1), max_size=2)
    if kind == "map":
        return st.dictionaries(
            st.text(max_size=12),
            value_for(shape.value, depth + 1),
            max_size=3,
        )
    if kind == "string":
        return _string(shape)
    if kind in ("integer", "long", "float", "double"):
        return _number(shape)
    if kind == "boolean":
        return st.booleans()
    if kind == "timestamp":
        return st.one_of(st.floats(0, 4e9, allow_nan=False), st.text(max_size=30), st.integers())
    if kind == "blob":
        return st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode())
    return _WRONG


_CACHE: dict[tuple[str, int], st.SearchStrategy[Any]] = {}


def value_for(shape: Shape, depth: int = 0) -> st.SearchStrategy[Any]:
    """Mostly well typed, sometimes of a wrong JSON type (one strategy per shape and depth: the models'
    shapes share members, and building them anew at every use would grow with their whole tree)."""
    key = (shape.name, depth)
    found = _CACHE.get(key)
    if found is None:
        good = well_typed(shape, depth)
        found = _CACHE[key] = st.one_of(good, good, good, _WRONG)
    return found


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode("utf-8", errors="surrogatepass")


def raw_body(document: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """``document`` as JSON bytes, or mis-encoded: truncated, not UTF-8, a JSON array or scalar, random
    bytes, empty."""
    return st.one_of(
        document.map(_dumps),
        document.map(_dumps),
        document.map(_dumps),
        document.map(lambda d: _dumps(d)[: max(1, len(_dumps(d)) // 2)]),  # truncated
        document.map(lambda d: _dumps(d).replace(b'"', b'"\xff', 1)),  # not UTF-8
        st.lists(st.integers(), max_size=3).map(_dumps),
        st.binary(max_size=256),
        st.just(b""),
        st.just(b"null"),
    )


def header_bytes() -> st.SearchStrategy[bytes]:
    """Header values: plain text, oversized, latin-1 and bytes that are not UTF-8."""
    return st.one_of(
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(str.encode),
        st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b and b"\x00" not in b),
        st.integers(1025, 3000).map(lambda n: b"a" * n),
        st.sampled_from([b"\xff\xfe", b"caf\xe9", b"\xc3\x28"]),
    )


def bad_answer(status: int, body: bytes) -> str | None:
    """Why an answer fails the fuzz's rules (a 5xx, a traceback in the body), or None."""
    if status >= 500:
        return f"status {status}: {body[:300]!r}"
    for marker in TRACEBACK_MARKERS:
        if marker in body:
            return f"traceback marker {marker!r} in a {status} answer: {body[:300]!r}"
    return None
