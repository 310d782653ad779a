"""The JSONPath subset SageMaker batch transform supports in InputFilter / OutputFilter.

``$``, ``$.name`` (dotted chains), ``$['a','b']`` / ``$["a"]``, ``$[i]``, ``$[i,j]`` (negative indices
allowed), ``$[start:end]`` with open ends, ``*`` (``$.*``, ``$[*]``). Slices are end-exclusive as in
Jayway JsonPath (the implementation AWS uses). After a selector that yields several values
(``[i,j]``, a slice, ``*``), later segments apply to each of them, as in JSONPath result sets.
A CSV record is a JSON array of its fields, so CSV filters use index paths.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_INT = r"-?\d+"
_INDEX_LIST = re.compile(rf"^\s*{_INT}\s*(,\s*{_INT}\s*)*$")
_SLICE = re.compile(rf"^\s*({_INT})?\s*:\s*({_INT})?\s*$")
_QUOTED = re.compile(r"""\s*(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)")\s*""")


@dataclass(frozen=True)
class Key:
    """``.name`` / ``['name']``: one member of an object."""

    name: str


@dataclass(frozen=True)
class Keys:
    """``['a','b']``: several members of an object, kept as an object."""

    names: tuple[str, ...]


@dataclass(frozen=True)
class Index:
    """``[i]``: one element of an array."""

    index: int


@dataclass(frozen=True)
class Indexes:
    """``[i,j,...]``: several elements of an array, as an array."""

    indexes: tuple[int, ...]


@dataclass(frozen=True)
class Slice:
    """``[start:end]``: a range of an array (end-exclusive), as an array."""

    start: int | None
    end: int | None


@dataclass(frozen=True)
class Wildcard:
    """``*``: every value of an object or array, as an array."""


Segment = Key | Keys | Index | Indexes | Slice | Wildcard


@dataclass(frozen=True)
class JsonPath:
    """A parsed path; :meth:`apply` evaluates it on a decoded JSON value."""

    text: str
    segments: tuple[Segment, ...]

    @property
    def is_root(self) -> bool:
        """True for ``$`` (the identity)."""
        return not self.segments

    def apply(self, value: Any) -> Any:
        """The selected part of ``value``; ValueError when the path does not match its shape."""
        multi = False
        for segment in self.segments:
            if multi:
                value = [_step(item, segment, self.text)[0] for item in value]
            else:
                value, multi = _step(value, segment, self.text)
        return value


def _step(value: Any, segment: Segment, text: str) -> tuple[Any, bool]:
    if isinstance(segment, Key):
        if not isinstance(value, dict):
            raise ValueError(f"{text}: .{segment.name} needs an object, the record has {_kind(value)}")
        if segment.name not in value:
            raise ValueError(f"{text}: the record has no member {segment.name!r}")
        return value[segment.name], False
    if isinstance(segment, Keys):
        if not isinstance(value, dict):
            raise ValueError(f"{text}: member names need an object, the record has {_kind(value)}")
        return {name: value[name] for name in segment.names if name in value}, False
    if isinstance(segment, Wildcard):
        if isinstance(value, dict):
            return list(value.values()), True
        if isinstance(value, list):
            return list(value), True
        raise ValueError(f"{text}: * needs an object or an array, the record has {_kind(value)}")
    if not isinstance(value, list):
        raise ValueError(f"{text}: an index needs an array, the record has {_kind(value)}")
    if isinstance(segment, Index):
        try:
            return value[segment.index], False
        except IndexError:
            raise ValueError(
                f"{text}: index {segment.index} is out of range for {len(value)} fields"
            ) from None
    if isinstance(segment, Indexes):
        try:
            return [value[i] for i in segment.indexes], True
        except IndexError:
            raise ValueError(f"{text}: an index is out of range for {len(value)} fields") from None
    assert isinstance(segment, Slice)
    return value[segment.start : segment.end], True


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return "a scalar"


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _parse_bracket(body: str) -> Segment:
    if body.strip() == "*":
        return Wildcard()
    if _INDEX_LIST.match(body):
        values = tuple(int(v) for v in body.split(","))
        return Index(values[0]) if len(values) == 1 else Indexes(values)
    slice_match = _SLICE.match(body)
    if slice_match:
        start, end = slice_match.groups()
        return Slice(None if start is None else int(start), None if end is None else int(end))
    names: list[str] = []
    pos = 0
    while pos < len(body):
        match = _QUOTED.match(body, pos)
        if not match:
            raise ValueError(f"cannot parse [{body}]")
        names.append(_unquote(match.group(1) if match.group(1) is not None else match.group(2)))
        pos = match.end()
        if pos < len(body):
            if body[pos] != "," or pos + 1 >= len(body):
                raise ValueError(f"cannot parse [{body}]")
            pos += 1
    if not names:
        raise ValueError("empty brackets")
    return Key(names[0]) if len(names) == 1 else Keys(tuple(names))


def parse_jsonpath(text: str) -> JsonPath:
    """Parse ``text``; ValueError with the reason when it is outside the supported subset."""
    source = text.strip()
    if not source.startswith("$"):
        raise ValueError("a path starts with '$'")
    segments: list[Segment] = []
    pos = 1
    while pos < len(source):
        char = source[pos]
        if char == ".":
            if source.startswith(".*", pos):
                segments.append(Wildcard())
                pos += 2
                continue
            match = _NAME.match(source, pos + 1)
            if not match:
                raise ValueError(f"expected a member name after '.' at position {pos}")
            segments.append(Key(match.group(0)))
            pos = match.end()
        elif char == "[":
            depth_end = _find_close(source, pos)
            segments.append(_parse_bracket(source[pos + 1 : depth_end]))
            pos = depth_end + 1
        else:
            raise ValueError(f"unexpected {char!r} at position {pos}")
    return JsonPath(text, tuple(segments))


def _find_close(source: str, start: int) -> int:
    quote: str | None = None
    pos = start + 1
    while pos < len(source):
        char = source[pos]
        if quote:
            if char == "\\":
                pos += 2
                continue
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "[":
            raise ValueError("nested brackets are not supported")
        elif char == "]":
            return pos
        pos += 1
    raise ValueError("unclosed '['")
