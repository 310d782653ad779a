"""Request validation generated from botocore's own SageMaker service model.

botocore checks only required members, JSON types and ``min`` on the client; the server has to enforce
``max``, ``pattern`` (matched against the whole value), ``enum`` and everything again for clients that
skip validation. Unknown members are ignored (newer SDKs send members we do not know yet).
:func:`check_invoke_request` applies the same to the URI and header members of the runtime's invocations
(InvokeEndpoint, InvokeEndpointWithResponseStream, InvokeEndpointAsync).

Messages follow the Coral style SageMaker uses::

    1 validation error detected: Value 'x y' at 'modelName' failed to satisfy constraint: Member must
    satisfy regular expression pattern: [a-zA-Z0-9]([\\-a-zA-Z0-9]*[a-zA-Z0-9])?

selfmaker extension: members whose pattern is an S3 URI also accept ``file://`` URIs (local data);
:func:`check_file_locations` keeps every ``file://`` location of a request out of the system's
directories and inside the operator's allowed roots.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import botocore.session
from botocore.model import ListShape, MapShape, OperationModel, ServiceModel, Shape, StructureShape

try:  # Java patterns in the model use \p{L} classes, which only `regex` understands
    import regex as _re
except ImportError:  # pragma: no cover - regex is a declared dependency
    import re as _re

from common import uris
from common.localpaths import location_problem
from selfmaker.errors import SageMakerError, ValidationError, ValidationException

FILE_SCHEME = "file://"

#: how many problems are listed in one message at most (Coral lists them all; keep messages short)
MAX_LISTED = 10


@functools.lru_cache(maxsize=4)
def service_model(service: str = "sagemaker") -> ServiceModel:
    """botocore's model of ``service`` (cached; loading it takes ~100 ms)."""
    return botocore.session.get_session().get_service_model(service)


@functools.lru_cache(maxsize=2048)
def _compiled(pattern: str) -> Any:
    try:
        return _re.compile(pattern)
    except Exception:  # noqa: BLE001 - a pattern we cannot compile is not enforced (a few use \uD800 pairs)
        return None


def _fmt(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


class _Validator:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def fail(self, value: Any, path: str, constraint: str) -> None:
        shown = "null" if value is None else f"'{_fmt(value)}'"  # Coral: "Value null at 'x'"
        self.errors.append(f"Value {shown} at '{path}' failed to satisfy constraint: {constraint}")

    def check(self, shape: Shape, value: Any, path: str) -> Any:
        """Record ``value``'s violations; return it as the operations should see it (a whole-number
        float for an integer member, such as ``2.0``, comes back as ``2``; containers are updated)."""
        kind = shape.type_name
        meta = shape.metadata
        if kind == "structure":
            assert isinstance(shape, StructureShape)
            if not isinstance(value, dict):
                self.fail(value, path, "Member must be a structure")
                return value
            for name in shape.required_members:
                if value.get(name) is None:
                    self.fail(None, _join(path, name), "Member must not be null")
            for name, member_value in value.items():
                member = shape.members.get(name)
                if member is None or member_value is None:
                    continue  # unknown members are ignored for forward compatibility
                checked = self.check(member, member_value, _join(path, name))
                if checked is not member_value:
                    value[name] = checked
        elif kind == "list":
            assert isinstance(shape, ListShape)
            if not isinstance(value, list):
                self.fail(value, path, "Member must be a list")
                return value
            self._length(value, len(value), meta, path)
            for index, item in enumerate(value, start=1):
                checked = self.check(shape.member, item, f"{path}.{index}.member")
                if checked is not item:
                    value[index - 1] = checked
        elif kind == "map":
            assert isinstance(shape, MapShape)
            if not isinstance(value, dict):
                self.fail(value, path, "Member must be a map")
                return value
            self._length(value, len(value), meta, path)
            for key, item in list(value.items()):
                self.check(shape.key, key, f"{path}.{key}.key")
                checked = self.check(shape.value, item, f"{path}.{key}.value")
                if checked is not item:
                    value[key] = checked
        elif kind == "string":
            if not isinstance(value, str):
                self.fail(value, path, "Member must be a string")
                return value
            self._length(value, len(value), meta, path)
            enum = shape.enum
            if enum and value not in enum:
                self.fail(value, path, f"Member must satisfy enum value set: [{', '.join(enum)}]")
            pattern = meta.get("pattern")
            if pattern and value.startswith("file://") and "s3" in pattern and "://" in pattern:
                pass  # selfmaker extension: every S3 URI member also takes a local file:// URI
            elif pattern:
                compiled = _compiled(pattern)
                if compiled is not None and compiled.fullmatch(value) is None:
                    self.fail(value, path, f"Member must satisfy regular expression pattern: {pattern}")
        elif kind in {"integer", "long"}:
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                else:
                    self.fail(value, path, "Member must be an integer")
                    return value
            self._range(value, meta, path)
        elif kind in {"float", "double"}:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                self.fail(value, path, "Member must be a number")
                return value
            self._range(value, meta, path)
        elif kind == "boolean":
            if not isinstance(value, bool):
                self.fail(value, path, "Member must be a boolean")
        elif kind == "timestamp":
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                self.fail(value, path, "Member must be a timestamp")
        elif kind == "blob" and not isinstance(value, str):
            self.fail(value, path, "Member must be base64 text")
        return value

    def _length(self, value: Any, length: int, meta: dict[str, Any], path: str) -> None:
        if "min" in meta and length < meta["min"]:
            self.fail(value, path, f"Member must have length greater than or equal to {meta['min']}")
        if "max" in meta and length > meta["max"]:
            self.fail(value, path, f"Member must have length less than or equal to {meta['max']}")

    def _range(self, value: float, meta: dict[str, Any], path: str) -> None:
        if "min" in meta and value < meta["min"]:
            self.fail(value, path, f"Member must have value greater than or equal to {meta['min']}")
        if "max" in meta and value > meta["max"]:
            self.fail(value, path, f"Member must have value less than or equal to {meta['max']}")


def _join(path: str, member: str) -> str:
    name = member[:1].lower() + member[1:]  # Coral paths are camelCase member names
    return f"{path}.{name}" if path else name


def validation_errors(operation: OperationModel, params: dict[str, Any]) -> list[str]:
    """Every constraint of ``operation``'s input that ``params`` violates, in Coral wording."""
    validator = _Validator()
    if operation.input_shape is not None:
        validator.check(operation.input_shape, params, "")
    return validator.errors


def validate_request(
    operation: OperationModel, params: dict[str, Any], error: type[SageMakerError] = ValidationException
) -> None:
    """Raise ``error`` naming every violated field of the request: the control plane's
    :class:`ValidationException`, or the runtime's ``ValidationError``."""
    errors = validation_errors(operation, params)
    if errors:
        count = len(errors)
        listed = "; ".join(errors[:MAX_LISTED])
        noun = "error" if count == 1 else "errors"
        raise error(f"{count} validation {noun} detected: {listed}")


#: members whose values are the caller's own strings, never locations the platform reads or writes
_NOT_LOCATIONS = frozenset({"Environment", "Tags"})
#: a framework model's code: a location in Environment (fetched by the platform when it is a URI)
_SUBMIT_DIRECTORY = "SAGEMAKER_SUBMIT_DIRECTORY"


def _file_uris(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """``(Coral path, file:// URI)`` of every file:// string in a request (hyperparameters hold them
    JSON-quoted, as the SDK sends ``sagemaker_submit_directory``)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith('"') and text.endswith('"') and len(text) > 1:
            text = text[1:-1]
        if text[:7].lower() == FILE_SCHEME:
            yield path, FILE_SCHEME + text[7:]
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in _NOT_LOCATIONS:
                yield from _file_uris(item, _join(path, str(key)))
            elif key == "Environment" and isinstance(item, dict) and _SUBMIT_DIRECTORY in item:
                # the one variable the platform reads as a location (selfmaker.modeldata adds its code)
                yield from _file_uris(item[_SUBMIT_DIRECTORY], f"{_join(path, key)}.{_SUBMIT_DIRECTORY}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _file_uris(item, f"{path}.{index + 1}.member")


def check_file_locations(
    params: dict[str, Any], *, roots: Iterable[Path] = (), forbidden: Iterable[Path] = ()
) -> None:
    """Refuse (ValidationException naming the value, the member and the setting) a request whose
    ``file://`` locations reach a system directory, a ``forbidden`` one (the platform's home) or, when the
    operator set ``roots``, leave them (:func:`common.localpaths.location_problem`)."""
    roots, forbidden = tuple(roots), tuple(forbidden)
    for where, uri in _file_uris(params, ""):
        try:
            path = uris.file_path(uri)
        except uris.UriError as exc:
            raise ValidationException(f"Value '{uri}' at '{where}' is not a usable location: {exc}") from None
        problem = location_problem(path, roots=roots, forbidden=forbidden)
        if problem is not None:
            raise ValidationException(f"Value '{uri}' at '{where}' is refused: {problem}.")


#: InvokeEndpoint members that select something selfmaker does not host: answering from the variant's
#: one model instead would be a silently wrong answer
_UNSUPPORTED_TARGETS = {
    "TargetModel": "multi-model endpoints",
    "InferenceComponentName": "inference components",
    "SessionId": "stateful sessions",
}


_ENDPOINT_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9])*")


@functools.lru_cache(maxsize=4)
def _invoke_headers(operation_name: str) -> tuple[Any, tuple[tuple[str, str, bool], ...]]:
    """sagemaker-runtime's model of ``operation_name`` and its (member, header, is integer) triples."""
    operation = service_model("sagemaker-runtime").operation_model(operation_name)
    triples = tuple(
        (name, shape.serialization["name"], shape.type_name in ("integer", "long"))
        for name, shape in operation.input_shape.members.items()
        if shape.serialization.get("location") == "header"
    )
    return operation, triples


def check_invoke_request(name: str, headers: Any, operation_name: str = "InvokeEndpoint") -> None:
    """An invocation's URI and header members against the service model's constraints (SageMaker's
    ``ValidationError``, every violation named), then the members selfmaker cannot honour.

    InvokeEndpointAsync's ``InputLocation`` may be missing here: selfmaker also takes the input in the
    body (checked by the async feature once the body is read).
    """
    operation, triples = _invoke_headers(operation_name)
    params: dict[str, Any] = {"EndpointName": name, "Body": ""}
    for member, header, integer in triples:
        value = headers.get(header)
        if value is not None:
            if integer:  # headers are text: a number is checked as one, anything else fails as not one
                try:
                    value = int(value)
                except ValueError:
                    pass
            params[member] = value
    if operation_name == "InvokeEndpointAsync":
        params.setdefault("InputLocation", "s3://body/")  # an inline body stands in for it (see above)
    if (
        len(params) - 2 == ("ContentType" in params) + ("Accept" in params)
        and len(name) <= 63
        and _ENDPOINT_NAME.fullmatch(name)
        and all(
            len(params[m]) <= 1024 and params[m].isascii() for m in ("ContentType", "Accept") if m in params
        )
    ):
        return  # the usual request, checked by hand: the generic validator costs ~20 µs per call
    validate_request(operation, params, ValidationError)
    for member, feature in _UNSUPPORTED_TARGETS.items():
        if member in params:
            raise ValidationError(
                f"{member} is not supported: selfmaker does not host {feature}; each "
                f"production variant of endpoint {name} serves one model."
            )
