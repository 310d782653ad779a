"""The hooks' context: the subset of Multi Model Server's ``Context`` that the sagemaker-inference toolkit
and user scripts use (``system_properties``, request headers, response headers and content type).

A hook that takes one parameter more than the toolkit passes receives a :class:`Context`
(as the toolkit's ``_run_handler_function`` does; :mod:`serving.handlers.hooks`).
"""

from __future__ import annotations

from typing import Any

from serving import contract


class RequestProcessor:
    """Per-request header access, as ``context.request_processor[0]`` in MMS."""

    def __init__(self, headers: dict[str, str] | None = None) -> None:
        self._headers = headers or {}

    def get_request_properties(self) -> dict[str, str]:
        """All request headers."""
        return self._headers

    def get_request_property(self, key: str) -> str | None:
        """One header, case-insensitively."""
        wanted = key.lower()
        for name, value in self._headers.items():
            if name.lower() == wanted:
                return value
        return None


class Context:
    """What a hook that takes ``context`` receives: model dir, request headers, response headers.

    ``context.custom_attributes`` is the request's ``X-Amzn-SageMaker-Custom-Attributes``; assigning it
    (or ``context.set_response_header(0, "X-Amzn-SageMaker-Custom-Attributes", v)``) sets the response's.
    """

    def __init__(
        self, model_dir: str, headers: dict[str, str] | None = None, *, gpu_id: int | None = None
    ) -> None:
        self.model_name = "model"
        self.manifest: dict[str, Any] = {}
        self._system_properties = {
            "model_dir": model_dir,
            "gpu_id": gpu_id,
            "batch_size": 1,
            "server_name": "selfmaker",
        }
        self.request_processor = [RequestProcessor(headers)]
        self.request_ids = {0: ""}
        self._response_headers: dict[str, str] = {}
        self._response_content_type: str | None = None
        self._response_status: tuple[int, str] | None = None

    @property
    def system_properties(self) -> dict[str, Any]:
        """``model_dir``, ``gpu_id``, ``batch_size``, ``server_name``."""
        return self._system_properties

    def get_request_header(self, idx: int, key: str) -> str | None:
        """One request header (case-insensitive)."""
        return self.request_processor[idx].get_request_property(key)

    def get_all_request_header(self, idx: int) -> dict[str, str]:
        """All request headers."""
        return self.request_processor[idx].get_request_properties()

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        """Set a response header (only custom attributes are forwarded by the server)."""
        self._response_headers[key] = str(value)

    def get_response_headers(self, idx: int = 0) -> dict[str, str]:
        """Headers set by hooks so far."""
        return self._response_headers

    def set_response_content_type(self, idx: int, value: str) -> None:
        """Override the response Content-Type."""
        self._response_content_type = value

    def get_response_content_type(self, idx: int = 0) -> str | None:
        return self._response_content_type

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        """Recorded for compatibility; errors should be raised instead."""
        self._response_status = (code, phrase)

    @property
    def custom_attributes(self) -> str | None:
        """The request's custom attributes header, or what a hook set for the response."""
        for key, value in self._response_headers.items():
            if key.lower() == contract.CUSTOM_ATTRIBUTES_HEADER.lower():
                return value
        return self.get_request_header(0, contract.CUSTOM_ATTRIBUTES_HEADER)

    @custom_attributes.setter
    def custom_attributes(self, value: str) -> None:
        self._response_headers[contract.CUSTOM_ATTRIBUTES_HEADER] = str(value)

    def response_custom_attributes(self) -> str | None:
        """Custom attributes a hook set for the response (None when none was set)."""
        for key, value in self._response_headers.items():
            if key.lower() == contract.CUSTOM_ATTRIBUTES_HEADER.lower():
                return value
        return None
