"""A serverless variant on AWS Lambda: one sandbox's model and the translation between the Application
Load Balancer's Lambda events and the model server's data plane (entry point: serving/lambda_handler.py).

``POST /endpoints/<name>/invocations`` (or the container contract's ``POST /invocations``) is answered by
the same :class:`DataPlane` as the model server — same codecs, hooks, errors and
``X-Amzn-Invoked-Production-Variant`` — and ``GET /ping`` is the target group's health check. Bodies travel
base64-encoded both ways, so binary payloads (``.npy``) arrive and leave intact; a target group with
multi-value headers gets ``multiValueHeaders`` back.

Settings (:class:`LambdaSettings` plus the model server's :class:`~serving.settings.ServingSettings`):
``SELFMAKER_MODEL_DATA`` is the ``s3://…/model.tar.gz`` to serve, unpacked under ``/tmp`` (the only
writable place in a Lambda sandbox); ``code/requirements.txt`` of the model is installed there too.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from serving import contract
from serving.dataplane import DataPlane
from serving.errors import (
    BadRequestError,
    ModelLoadError,
    ServingError,
    error_body,
    error_response,
    runtime_error,
    runtime_error_body,
)
from serving.settings import ServingSettings

log = logging.getLogger(__name__)

VARIANT_HEADER = "X-Amzn-Invoked-Production-Variant"
TARGET_VARIANT_HEADER = "x-amzn-sagemaker-target-variant"
_RUNTIME_PATH = re.compile(r"^/endpoints/(?P<name>[^/]+)/invocations$")
_PING_PATHS = ("/ping", "/endpoints/ping")
_JSON = "application/json"


class LambdaSettings(BaseSettings):
    """What the function is (environment aliases in parentheses), read once per sandbox.

    ``endpoint_name`` (SELFMAKER_ENDPOINT_NAME): when set, only ``/endpoints/<that name>/invocations`` is
    answered; ``variant_name`` (SELFMAKER_VARIANT_NAME) is the ``X-Amzn-Invoked-Production-Variant`` of
    every answer; ``state_dir`` (SELFMAKER_LAMBDA_STATE_DIR) is where the model is unpacked.
    """

    model_config = SettingsConfigDict(validate_by_name=True, validate_by_alias=True, extra="ignore")

    endpoint_name: str | None = Field(None, alias="SELFMAKER_ENDPOINT_NAME")
    variant_name: str = Field("AllTraffic", alias="SELFMAKER_VARIANT_NAME", min_length=1, max_length=63)
    state_dir: str = Field("/tmp/selfmaker", alias="SELFMAKER_LAMBDA_STATE_DIR")
    memory_mb: int | None = Field(None, alias="AWS_LAMBDA_FUNCTION_MEMORY_SIZE", ge=128)


class LambdaApp:
    """One sandbox's model and the translation between ALB events and the data plane."""

    def __init__(self, settings: LambdaSettings, serving: ServingSettings) -> None:
        self.settings = settings
        # One invocation at a time per sandbox: every core goes to the one ONNX Runtime session. The file
        # system is read-only apart from /tmp: the model's code/requirements.txt is installed into a
        # directory there, put on sys.path before the hooks are imported.
        self.pip_target = Path(settings.state_dir) / "site-packages"
        self.serving = serving.model_copy(update={"workers": 1, "pip_target": str(self.pip_target)})
        self.plane: DataPlane | None = None
        self.error: str | None = None

    @classmethod
    def from_environment(cls) -> LambdaApp:
        """Settings from the function's environment (raises :class:`ModelLoadError` naming a bad value)."""
        try:
            return cls(LambdaSettings(), ServingSettings())
        except ValidationError as exc:
            raise ModelLoadError(f"invalid function settings: {exc}") from exc

    @property
    def ready(self) -> bool:
        return self.plane is not None and self.plane.ready

    def load(self, archive: Path | None = None) -> LambdaApp:
        """Download, unpack and load the model, once (raises :class:`ModelLoadError`).

        ``archive``: the model source already downloaded (serving/lambda_handler.py fetches it while the
        heavy modules import); otherwise the source is resolved as the model server resolves it.
        """
        if self.ready:
            return self
        source = self.serving.model_data or self.serving.model_dir
        started = time.perf_counter()
        state_dir = Path(self.settings.state_dir) / "model"
        plane = DataPlane(str(archive) if archive is not None else source, self.serving, state_dir=state_dir)
        if str(self.pip_target) not in sys.path:
            sys.path.insert(0, str(self.pip_target))
        try:
            plane.load()
        except ModelLoadError as exc:
            self.error = exc.message
            # a failed download is not replayed to the next attempt of this sandbox (see prepare_model)
            (state_dir / "prepared.json").unlink(missing_ok=True)
            raise
        self.plane, self.error = plane, None
        log.info(
            "model ready for variant %s from %s in %.3f s (memory %s MB)",
            self.settings.variant_name,
            source,
            time.perf_counter() - started,
            self.settings.memory_mb or "?",
        )
        return self

    # -- one event ---------------------------------------------------------------------------------------

    def handle(self, event: Mapping[str, Any], request_id: str = "") -> dict[str, Any]:
        """Answer one ALB event; never raises (a raised error would be a 502 without a body).

        On the runtime path (``/endpoints/<name>/invocations``) a failed invocation is answered in
        sagemaker-runtime's shape by :func:`serving.errors.runtime_error`, as the model server answers its
        runtime path: the model's 4xx/5xx become ``ModelError`` (424) carrying the model server's status
        and body in ``OriginalStatusCode`` / ``OriginalMessage``, so boto3 raises ``ModelError``; a body
        over the limit and a wrong ``TargetVariant`` are ``ValidationError`` (400); a model that failed to
        load is ``ServiceUnavailable`` (503). The container contract's ``/invocations`` answers exactly
        as the model server does.
        """
        extra: dict[str, str] = {VARIANT_HEADER: self.settings.variant_name}
        if request_id:
            extra["x-amzn-RequestId"] = contract.sanitize_header(request_id)
        if not isinstance(event, Mapping):
            # a direct `aws lambda invoke` with some other JSON: answered, not a function error
            return _answer(
                400,
                error_body(400, "the event is not an Application Load Balancer request"),
                _JSON,
                extra,
                False,
            )
        multi = "multiValueHeaders" in event
        headers = _headers(event, multi)
        method = str(event.get("httpMethod") or "").upper()
        path = str(event.get("path") or "")
        if path in _PING_PATHS or path.endswith("/ping"):
            if method not in ("GET", "HEAD"):
                return _answer(
                    405, error_body(405, f"{method} is not allowed on {path}"), _JSON, extra, multi
                )
            return self._ping(extra, multi)
        match = _RUNTIME_PATH.match(path)
        if path != "/invocations" and (
            match is None or (self.settings.endpoint_name and match["name"] != self.settings.endpoint_name)
        ):
            return _answer(404, error_body(404, f"no route for {path}"), _JSON, extra, multi)
        if method != "POST":
            return _answer(405, error_body(405, f"{method} is not allowed on {path}"), _JSON, extra, multi)
        runtime_path = match is not None
        target = headers.get(TARGET_VARIANT_HEADER)
        if target is not None and target != self.settings.variant_name:
            message = (
                f"TargetVariant {contract.sanitize_header(target)!r} is not a variant of this endpoint "
                f"(its variant is {self.settings.variant_name!r})."
            )
            if runtime_path:
                return _answer(
                    400,
                    runtime_error_body("ValidationError", message),
                    _JSON,
                    {**extra, "x-amzn-ErrorType": "ValidationError"},
                    multi,
                )
            return _answer(400, error_body(400, message), _JSON, extra, multi)
        status, body, content_type, out = self._invoke(event, headers)
        if status >= 400 and match is not None:  # the runtime path
            # the same mapping as the model server's runtime path (serving.http.fastpath)
            out_status, code, error = runtime_error(
                status, body, endpoint=match["name"], variant=self.settings.variant_name
            )
            return _answer(out_status, error, _JSON, {**extra, "x-amzn-ErrorType": code}, multi)
        return _answer(status, body, content_type, {**extra, **out}, multi)

    def _ping(self, extra: dict[str, str], multi: bool) -> dict[str, Any]:
        if self.ready:
            return _answer(200, b"{}", _JSON, extra, multi)
        message = f"model failed to load: {self.error}" if self.error else "model is loading"
        return _answer(503, error_body(503, message), _JSON, extra, multi)

    def _invoke(
        self, event: Mapping[str, Any], headers: dict[str, str]
    ) -> tuple[int, bytes, str, dict[str, str]]:
        """``(status, body, content type, headers)`` of one invocation, errors mapped as the model server
        maps them (:func:`serving.errors.error_response`)."""
        try:
            body = _body(event)
            if not self.ready:
                try:
                    self.load()
                except ModelLoadError:
                    log.exception("model failed to load")
                    return 503, error_body(503, "model failed to load"), _JSON, {}
            assert self.plane is not None
            custom = contract.CUSTOM_ATTRIBUTES_HEADER.lower()
            result = self.plane.invoke_full(
                body,
                headers.get("content-type"),
                headers.get("accept"),
                headers.get(custom),
                _title_case(headers) if self.plane.takes_headers else None,
            )
        except ServingError as exc:
            status, error = error_response(exc)
            if status >= 500 and status != 503:
                log.error("request failed", exc_info=exc)
            return status, error, _JSON, {}
        except Exception as exc:
            log.error("request failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
            status, error = error_response(exc)
            return status, error, _JSON, {}
        out: dict[str, str] = {}
        if result.custom_attributes is not None:
            out[contract.CUSTOM_ATTRIBUTES_HEADER] = contract.sanitize_header(result.custom_attributes)
        return 200, result.body, result.content_type, out


def _headers(event: Mapping[str, Any], multi: bool) -> dict[str, str]:
    """Lower-cased request headers; of a repeated header (multi-value target groups) the last value."""
    out: dict[str, str] = {}
    # handle() must answer any event: headers that are not a mapping count as none (never an exception)
    if multi:
        multi_headers = event.get("multiValueHeaders")
        for name, values in multi_headers.items() if isinstance(multi_headers, Mapping) else ():
            if isinstance(values, list) and values:
                out[str(name).lower()] = str(values[-1])
    else:
        single = event.get("headers")
        for name, value in single.items() if isinstance(single, Mapping) else ():
            if value is not None:
                out[str(name).lower()] = str(value)
    return out


def _title_case(headers: dict[str, str]) -> dict[str, str]:
    # user hooks see the headers as the model server hands them over (werkzeug's Title-Case names)
    return {"-".join(part.capitalize() for part in name.split("-")): value for name, value in headers.items()}


def _body(event: Mapping[str, Any]) -> bytes:
    raw = event.get("body")
    if raw is None:
        return b""
    if not isinstance(raw, str):
        raise BadRequestError("the request body is not a string")
    if event.get("isBase64Encoded"):
        try:
            return base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadRequestError(f"the request body is not valid base64: {exc}") from exc
    return raw.encode("utf-8")


def _answer(
    status: int, body: bytes, content_type: str, headers: dict[str, str], multi: bool
) -> dict[str, Any]:
    """The ALB response event; the body is always base64 so any bytes reach the client unchanged."""
    from http import HTTPStatus

    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    all_headers = {"Content-Type": content_type, **headers}
    response: dict[str, Any] = {
        "statusCode": status,
        "statusDescription": f"{status} {phrase}".strip(),
        "isBase64Encoded": True,
        "body": base64.b64encode(body).decode("ascii"),
    }
    if multi:
        response["multiValueHeaders"] = {name: [value] for name, value in all_headers.items()}
    else:
        response["headers"] = all_headers
    return response


def unavailable(event: Mapping[str, Any]) -> dict[str, Any]:
    """The answer of a sandbox whose settings are unusable (the log says why)."""
    return _answer(503, error_body(503, "model failed to load"), _JSON, {}, "multiValueHeaders" in event)
