"""Inference handlers: the default ONNX handler and sagemaker-inference style user hooks.

A handler turns ``(body, content_type, accept, context)`` into ``(bytes, content_type)``.

* :class:`DefaultHandler` — ``model.onnx`` through :class:`~serving.runtime.OnnxModel`, answers shaped by
  ``signature.json`` (``response_format``, ``threshold``, ``classes``; see docs/contracts.md).
* :class:`HooksHandler` — ``code/inference.py`` with any of ``model_fn``, ``input_fn``, ``predict_fn``,
  ``output_fn``, ``transform_fn`` (plus ``model_warmup_fn``), called exactly as the sagemaker-inference
  toolkit calls them: the context is passed only to hooks that take one more parameter, text bodies
  (CSV/JSON) arrive as ``str``, a ``(body, content_type)`` tuple sets the response type, missing hooks
  fall back to the default behaviour.

Modules: :mod:`~serving.handlers.context` (the MMS context shim), :mod:`~serving.handlers.formatter`
(the response formatter), :mod:`~serving.handlers.default` (the default handler),
:mod:`~serving.handlers.hooks` (the user hooks handler). This module picks one for a model.
"""

from __future__ import annotations

import logging
from pathlib import Path

from serving import contract
from serving.errors import ModelLoadError, UnsupportedMediaTypeError
from serving.handlers.context import Context, RequestProcessor
from serving.handlers.default import DefaultHandler, InvocationResult
from serving.handlers.formatter import Prediction, ResponseFormatter
from serving.handlers.hooks import HooksHandler, load_user_module

log = logging.getLogger(__name__)


def user_program(model_dir: Path, program: str | None) -> Path | None:
    """``code/<program>`` (SAGEMAKER_PROGRAM, default inference.py) if it exists; a named one must."""
    name = program or contract.DEFAULT_PROGRAM
    if not name.endswith(".py"):
        name += ".py"
    path = model_dir / contract.CODE_DIR / name
    if path.is_file():
        return path
    if program:
        raise ModelLoadError(
            f"SAGEMAKER_PROGRAM={program!r} but {contract.CODE_DIR}/{name} is not in the model"
        )
    return None


def build_handler(
    model_dir: Path, *, program: str | None, intra_op_threads: int, use_gpu: bool | None, default_accept: str
) -> DefaultHandler | HooksHandler:
    """The hooks handler when the model carries user code, else the default ONNX handler."""
    path = user_program(model_dir, program)
    if path is None:
        return DefaultHandler(
            model_dir, intra_op_threads=intra_op_threads, use_gpu=use_gpu, default_accept=default_accept
        )
    module = load_user_module(path)
    handler = HooksHandler(
        model_dir, module, intra_op_threads=intra_op_threads, use_gpu=use_gpu, default_accept=default_accept
    )
    log.info("user hooks from %s: %s", path.name, ", ".join(handler.defined) or "(none)")
    return handler


__all__ = [
    "Context",
    "DefaultHandler",
    "HooksHandler",
    "InvocationResult",
    "Prediction",
    "RequestProcessor",
    "ResponseFormatter",
    "UnsupportedMediaTypeError",
    "build_handler",
    "load_user_module",
    "user_program",
]
