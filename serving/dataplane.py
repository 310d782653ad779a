"""The data plane: decode → predict → encode, with no HTTP in sight.

Stable API (used by the HTTP app, the batch engine and the async worker)::

    from serving.dataplane import DataPlane
    plane = DataPlane("/opt/ml/model")          # a model dir, a model.tar.gz path, file:// or s3:// URI
    plane.load()                                # prepare + model_fn + warm-up; raises ModelLoadError
    body, content_type = plane.invoke(b"1,2,3\n", "text/csv", "application/json")
    result = plane.invoke_full(body, content_type, accept, custom_attributes="k=v")  # InvocationResult

Errors are :class:`serving.errors.ServingError` subclasses carrying the HTTP status (400 malformed or
not matching the model signature, 406 Accept, 413 too large, 415 Content-Type, 503 not ready); any other
exception comes from user code or the runtime and means "internal error"
(:func:`serving.errors.error_response` maps both). ``invoke`` is thread-safe for the default handler.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

from serving import contract
from serving.errors import ModelLoadError, ModelNotReadyError, PayloadTooLargeError, ServingError
from serving.handlers import DefaultHandler, HooksHandler, InvocationResult, build_handler, user_program
from serving.modelsource import install_requirements, prepare_model
from serving.native import convert_native_model
from serving.settings import ServingSettings

log = logging.getLogger(__name__)


class DataPlane:
    """A loaded model behind ``invoke(body, content_type, accept, custom_attributes)``.

    ``model_dir`` defaults to ``settings.model_data`` or ``settings.model_dir``; sources that are not
    directories are unpacked into ``state_dir`` (a temporary directory when not given).
    """

    def __init__(
        self,
        model_dir: str | Path | None = None,
        settings: ServingSettings | None = None,
        *,
        state_dir: str | Path | None = None,
    ) -> None:
        self.settings = settings or ServingSettings()
        self.source = (
            str(model_dir) if model_dir is not None else (self.settings.model_data or self.settings.model_dir)
        )
        self._state_dir = Path(state_dir) if state_dir else None
        self._cleanup: weakref.finalize[..., DataPlane] | None = None
        self.model_dir: Path | None = None
        self.handler: DefaultHandler | HooksHandler | None = None
        self.error: str | None = None
        self._ready = False
        self._max_bytes = self.settings.max_payload_bytes()

    @property
    def ready(self) -> bool:
        """True once the model is loaded and the warm-up prediction succeeded."""
        return self._ready

    @property
    def takes_headers(self) -> bool:
        """True when user hooks run (they see all request headers through the context)."""
        return isinstance(self.handler, HooksHandler)

    def load(self) -> DataPlane:
        """Prepare the source, load the model and run one warm-up prediction.

        On failure ``error`` holds the reason and :class:`ModelLoadError` is raised.
        """
        started = time.perf_counter()
        try:
            if self._state_dir is None and Path(self.source).is_dir():
                # in-process use on a plain directory: nothing to unpack, nothing to share
                self.model_dir = Path(self.source)
                if self.settings.install_requirements:
                    install_requirements(
                        self.model_dir, self.settings.pip_wheel, target=self.settings.pip_target
                    )
            else:
                if self._state_dir is None:
                    tmp = tempfile.mkdtemp(prefix="selfmaker-model-")
                    self._cleanup = weakref.finalize(self, shutil.rmtree, tmp, True)
                    self._state_dir = Path(tmp)
                self.model_dir = prepare_model(
                    self.source,
                    self._state_dir,
                    install=self.settings.install_requirements,
                    pip_wheel=self.settings.pip_wheel,
                    pip_target=self.settings.pip_target,
                    max_unpacked_bytes=self.settings.max_unpacked_bytes,
                    submit_directory=self.settings.submit_directory,
                )
            if user_program(self.model_dir, self.settings.program) is None:
                convert_native_model(self.model_dir)  # SageMaker's own xgboost-model → model.onnx
            handler = build_handler(
                self.model_dir,
                program=self.settings.program,
                intra_op_threads=self.settings.effective_ort_threads(),
                use_gpu=self.settings.use_gpu,
                default_accept=self.settings.default_accept,
            )
            handler.load()
            handler.warmup()
        except ModelLoadError as exc:
            self.error = exc.message
            raise
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            raise ModelLoadError(f"model failed to load: {self.error}") from exc
        self.handler = handler
        self._ready = True
        log.info("model ready from %s in %.3f s", self.source, time.perf_counter() - started)
        return self

    def invoke(
        self,
        body: bytes,
        content_type: str | None,
        accept: str | None = None,
        custom_attributes: str | None = None,
    ) -> tuple[bytes, str]:
        """Answer one request: ``(response body, response content type)``."""
        result = self.invoke_full(body, content_type, accept, custom_attributes)
        return result.body, result.content_type

    def invoke_full(
        self,
        body: bytes,
        content_type: str | None,
        accept: str | None = None,
        custom_attributes: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> InvocationResult:
        """Like :meth:`invoke`, also returning custom attributes set by hooks and the model time."""
        handler = self.handler
        if handler is None:
            raise ModelNotReadyError("model failed to load" if self.error else "model is not loaded yet")
        self._check_size(body)
        if isinstance(handler, HooksHandler):
            all_headers = dict(headers or {})
            if content_type:
                all_headers.setdefault("Content-Type", content_type)
            if accept:
                all_headers.setdefault("Accept", accept)
            if custom_attributes is not None:
                all_headers[contract.CUSTOM_ATTRIBUTES_HEADER] = custom_attributes
            out, out_type, attributes, seconds = handler.invoke(body, content_type or "", accept, all_headers)
        else:
            out, out_type, attributes, seconds = handler.invoke(body, content_type or "", accept, None)
        return InvocationResult(out, out_type, attributes, seconds)

    def _check_size(self, body: bytes) -> None:
        if len(body) > self._max_bytes:
            raise PayloadTooLargeError(
                f"request body of {len(body)} bytes exceeds the {self.settings.max_payload_mb} MB limit"
            )

    @property
    def batchable(self) -> bool:
        """True when :meth:`invoke_many` can share model runs between requests (the default handler;
        user hooks always run one request at a time, as the toolkit runs them)."""
        return isinstance(self.handler, DefaultHandler)

    def invoke_many(
        self, requests: Sequence[tuple[bytes, str | None, str | None]]
    ) -> list[InvocationResult | Exception]:
        """Answer ``(body, content_type, accept)`` requests together: one model run for those whose
        records stack (see :meth:`DefaultHandler.invoke_many`). Each entry is the request's result
        or the :class:`ServingError` (or other exception) it alone met."""
        handler = self.handler
        if not isinstance(handler, DefaultHandler):
            answers: list[InvocationResult | Exception] = []
            for body, content_type, accept in requests:
                try:
                    answers.append(self.invoke_full(body, content_type, accept))
                except Exception as exc:
                    answers.append(exc)
            return answers
        out: list[InvocationResult | Exception | None] = [None] * len(requests)
        positions: list[int] = []
        checked: list[tuple[bytes, str | None, str | None]] = []
        for index, request in enumerate(requests):
            try:
                self._check_size(request[0])
            except PayloadTooLargeError as exc:
                out[index] = exc
            else:
                positions.append(index)
                checked.append(request)
        answers = handler.invoke_many(checked)
        if len(checked) == len(requests):
            return answers
        for index, answer in zip(positions, answers, strict=True):
            out[index] = answer
        return out  # type: ignore[return-value]

    def close(self) -> None:
        """Drop the model and any temporary unpacked copy."""
        self.handler = None
        self._ready = False
        if self._cleanup is not None:
            self._cleanup()
            self._cleanup = None


__all__ = ["DataPlane", "InvocationResult", "ServingError"]
