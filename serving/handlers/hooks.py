"""sagemaker-inference style user hooks: ``code/inference.py`` with any of ``model_fn``, ``input_fn``,
``predict_fn``, ``output_fn``, ``transform_fn`` (plus ``model_warmup_fn``), called exactly as the toolkit
calls them: the context is passed only to hooks that take one more parameter, text bodies (CSV/JSON) arrive
as ``str``, a ``(body, content_type)`` tuple sets the response type, missing hooks fall back to the default
handler's behaviour.
"""

from __future__ import annotations

import importlib.util
import inspect
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from serving import codecs, contract
from serving.contract import Signature
from serving.errors import BadRequestError, ModelLoadError
from serving.handlers import booster
from serving.handlers.context import Context
from serving.handlers.default import DefaultHandler
from serving.handlers.formatter import Prediction, ResponseFormatter
from serving.runtime import OnnxModel


def _call_hook(func: Callable[..., Any], context: Context, *args: Any) -> Any:
    """The toolkit's ``_run_handler_function``: pass the context only to hooks that take it."""
    n_params = len(inspect.signature(func).parameters)
    if n_params == len(args):
        return func(*args)
    if n_params == len(args) + 1:
        return func(*args, context)
    raise TypeError(f"{func.__name__} takes {n_params} arguments but {len(args)} were given")


def load_user_module(path: Path) -> Any:
    """Import ``code/<program>`` as a fresh module with ``code/`` on ``sys.path`` (for its own imports)."""
    code_dir = str(path.parent)
    if code_dir not in sys.path:
        sys.path.insert(0, code_dir)
    name = f"selfmaker_user_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import {path.name}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ModelLoadError(f"importing code/{path.name} failed: {type(exc).__name__}: {exc}") from exc
    return module


class HooksHandler:
    """A user module's sagemaker-inference hooks with the default handler's behaviour as fallback."""

    HOOKS = ("model_fn", "input_fn", "predict_fn", "output_fn", "transform_fn", "model_warmup_fn")

    def __init__(
        self,
        model_dir: Path,
        module: Any,
        *,
        intra_op_threads: int,
        use_gpu: bool | None,
        default_accept: str,
    ) -> None:
        self.model_dir = model_dir
        self.module = module
        self.default = DefaultHandler(
            model_dir, intra_op_threads=intra_op_threads, use_gpu=use_gpu, default_accept=default_accept
        )
        self.default_accept = default_accept
        self.model: Any = None
        hooks = {name: getattr(module, name, None) for name in self.HOOKS}
        if hooks["transform_fn"] and (hooks["input_fn"] or hooks["predict_fn"] or hooks["output_fn"]):
            raise ModelLoadError(
                "Cannot use transform_fn implementation in conjunction with input_fn, predict_fn, "
                "and/or output_fn implementation"
            )
        self.model_fn = hooks["model_fn"] or self.default_model_fn
        self.input_fn = hooks["input_fn"] or self.default_input_fn
        self.predict_fn = hooks["predict_fn"] or self.default_predict_fn
        self.output_fn = hooks["output_fn"] or self.default_output_fn
        self.transform_fn = hooks["transform_fn"] or self.default_transform_fn
        self.model_warmup_fn = hooks["model_warmup_fn"]
        self.defined = sorted(name for name, fn in hooks.items() if fn)

    # -- defaults (same behaviour as the default handler) -----------------------------------

    def default_model_fn(self, model_dir: str) -> Any:
        if booster.has_native_model(self.model_dir):  # SageMaker's XGBoost framework mode: no model.onnx
            return booster.load_model(self.model_dir)
        self.default.load()
        return self.default.model

    def default_input_fn(self, input_data: Any, content_type: str) -> Any:
        ctype = contract.normalise_content_type(content_type) or contract.CSV
        if isinstance(input_data, str):
            input_data = input_data.encode("utf-8")
        if ctype == contract.NPZ:
            # a scipy.sparse matrix, as the toolkit's decoder gives (its _npz_to_sparse is this call);
            # imported here: importing scipy.sparse takes tenths of a second and only this content type
            # needs it
            import scipy.sparse

            try:
                return scipy.sparse.load_npz(io.BytesIO(input_data))
            except Exception as exc:  # scipy/zipfile raise many types for a body that is not save_npz output
                raise BadRequestError(
                    "malformed application/x-npz body (expected scipy.sparse.save_npz output): "
                    f"{type(exc).__name__}: {exc}"
                ) from None
        if booster.is_xgboost_model(self.model):
            return booster.decode(input_data, ctype, self.model)
        if isinstance(self.model, OnnxModel):
            return codecs.decode(input_data, ctype, self.model.input_dtype, self.model.feature_width)
        return codecs.decode(input_data, ctype, np.float32)

    def default_predict_fn(self, data: Any, model: Any) -> Any:
        if isinstance(model, OnnxModel):
            return Prediction(model.predict(model.validate(data)))
        if booster.is_xgboost_model(model):
            return booster.predict(data, model)
        if hasattr(model, "predict"):
            return model.predict(data)
        if callable(model):
            return model(data)
        raise TypeError(
            "the model returned by model_fn has no predict() and is not callable; define predict_fn"
        )

    def default_output_fn(self, prediction: Any, accept: str) -> Any:
        if isinstance(prediction, Prediction) and self.default.formatter is not None:
            answer_type = self.default.formatter.accept(accept)
            return self.default.formatter.encode(prediction, answer_type), answer_type
        answer_type = codecs.choose_accept(accept, contract.JSON)
        if answer_type == contract.JSON:
            return codecs.encode_json(prediction), answer_type
        if answer_type == contract.JSONLINES:
            return codecs.encode_jsonlines(list(prediction)), answer_type
        if answer_type == contract.CSV:
            return codecs.encode_csv(
                np.asarray(prediction) if not isinstance(prediction, list) else prediction
            ), answer_type
        return codecs.encode_npy(prediction), answer_type

    def default_transform_fn(
        self, model: Any, input_data: Any, content_type: str, accept: str, context: Context
    ) -> Any:
        data = _call_hook(self.input_fn, context, input_data, content_type)
        prediction = _call_hook(self.predict_fn, context, data, model)
        return _call_hook(self.output_fn, context, prediction, accept)

    # -- handler protocol ---------------------------------------------------------------------

    def load(self) -> None:
        """Call ``model_fn`` (user's or the ONNX default)."""
        context = Context(str(self.model_dir))
        self.model = _call_hook(self.model_fn, context, str(self.model_dir))
        if isinstance(self.model, OnnxModel) and self.default.formatter is None:
            self.default.formatter = ResponseFormatter(
                Signature.load(self.model_dir), self.model.output_names, self.default_accept
            )

    def warmup(self) -> None:
        """``model_warmup_fn(model_dir, model)`` if defined, else a zero prediction for an ONNX model."""
        if self.model_warmup_fn is not None:
            _call_hook(self.model_warmup_fn, Context(str(self.model_dir)), str(self.model_dir), self.model)
        elif isinstance(self.model, OnnxModel):
            self.model.predict(self.model.warmup_feeds())

    def invoke(
        self, body: bytes, content_type: str, accept: str | None, headers: dict[str, str] | None
    ) -> tuple[bytes, str, str | None, float]:
        """Run ``transform_fn`` the way the toolkit does; returns (body, type, custom attributes, seconds)."""
        context = Context(str(self.model_dir), headers)
        if not accept or accept.strip() == contract.ANY:
            accept = self.default_accept
        raw_type = (content_type or "").split(";", 1)[0].strip()
        input_data: Any = body
        if contract.normalise_content_type(raw_type) in (contract.JSON, contract.CSV):
            try:
                input_data = body.decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequestError(f"{raw_type} body is not UTF-8") from None
        started = time.perf_counter()
        # hooks see the Content-Type header as sent (parameters included), as under the toolkit
        result = _call_hook(self.transform_fn, context, self.model, input_data, content_type, accept)
        model_seconds = time.perf_counter() - started
        response_type = context.get_response_content_type() or accept
        if isinstance(result, tuple):
            result, response_type = result[0], result[1]
        if isinstance(result, str):
            result = result.encode("utf-8")
        elif isinstance(result, (bytearray, memoryview)):
            result = bytes(result)
        elif not isinstance(result, bytes):
            result = codecs.encode_json(result)
        return result, str(response_type), context.response_custom_attributes(), model_seconds
