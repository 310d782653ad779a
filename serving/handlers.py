"""Inference handlers: the default ONNX handler and sagemaker-inference style user hooks.

A handler turns ``(body, content_type, accept, context)`` into ``(bytes, content_type)``.

* :class:`DefaultHandler` — ``model.onnx`` through :class:`~serving.runtime.OnnxModel`, answers shaped by
  ``signature.json`` (``response_format``, ``threshold``, ``classes``; see docs/contracts.md).
* :class:`HooksHandler` — ``code/inference.py`` with any of ``model_fn``, ``input_fn``, ``predict_fn``,
  ``output_fn``, ``transform_fn`` (plus ``model_warmup_fn``), called exactly as the sagemaker-inference
  toolkit calls them: the context is passed only to hooks that take one more parameter, text bodies
  (CSV/JSON) arrive as ``str``, a ``(body, content_type)`` tuple sets the response type, missing hooks
  fall back to the default behaviour.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from serving import codecs, contract
from serving.contract import Signature
from serving.errors import BadRequestError, ModelLoadError, NotAcceptableError, UnsupportedMediaTypeError
from serving.runtime import OnnxModel

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# the hooks' context (the subset of MMS's ``Context`` the toolkit and user scripts use)


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

    def __init__(self, model_dir: str, headers: dict[str, str] | None = None, *, gpu_id: int | None = None) -> None:
        self.model_name = "model"
        self.manifest: dict[str, Any] = {}
        self._system_properties = {"model_dir": model_dir, "gpu_id": gpu_id, "batch_size": 1, "server_name": "selfmaker"}
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


class InvocationResult(NamedTuple):
    """One answer: body, its content type, response custom attributes, model (handler) seconds."""

    body: bytes
    content_type: str
    custom_attributes: str | None = None
    model_seconds: float = 0.0


# ---------------------------------------------------------------------------------------------
# shaping ONNX outputs into SageMaker-style answers


class Prediction(dict):
    """``{output name: array}`` of one ONNX run; the default ``output_fn`` knows how to encode it."""


class ResponseFormatter:
    """Encodes ONNX outputs per ``signature.json`` (docs/contracts.md, "Responses by response_format")."""

    def __init__(self, signature: Signature, output_names: list[str], default_accept: str) -> None:
        self.signature = signature
        self.format = signature.response_format
        self.output_names = output_names
        if self.format == "xgboost":
            self.default_accept = contract.CSV
        elif self.format == "linear-learner":
            self.default_accept = contract.JSON
        else:
            self.default_accept = contract.normalise_content_type(default_accept) or contract.JSON
            if self.default_accept not in contract.ENCODABLE:
                self.default_accept = contract.JSON
        self.prob_name = self._find("probabilities", output_names)
        self.label_name = self._find("label", output_names)
        task = signature.task
        if task is None:
            task = "classification" if self.prob_name else ("regression" if len(output_names) == 1 else None)
        elif task != "regression" and self.prob_name is None and len(output_names) == 1:
            # a classifier exported with a single output: that output holds the probabilities
            # (1-D: P(class 1) of a binary model)
            self.prob_name = output_names[0]
        self.task = task
        self.classes = signature.classes
        self.threshold = signature.threshold

    @staticmethod
    def _find(name: str, names: list[str]) -> str | None:
        if name in names:
            return name
        for candidate in names:
            # "probabilities", "probability", skl2onnx's "output_probability" / "output_label"
            if candidate.lower().removeprefix("output_").startswith(name[:5]):
                return candidate
        return None

    def accept(self, accept: str | None) -> str:
        """Resolve the Accept header against what this model answers (406 when impossible)."""
        return codecs.choose_accept(accept, self.default_accept)

    # -- classification ---------------------------------------------------------------------

    def _labels(self, probs: np.ndarray, onnx_labels: np.ndarray | None, classes: list[Any] | None) -> list[Any]:
        """Predicted label per record: ``classes[index]``, the graph's own labels, or the index."""
        n_classes = probs.shape[1]
        use_onnx = onnx_labels is not None and self.classes is None and onnx_labels.shape[:1] == probs.shape[:1]
        if n_classes == 2 and self.task != "multiclass_classification":
            if use_onnx and self.threshold == 0.5:
                return onnx_labels.reshape(len(onnx_labels)).tolist()  # type: ignore[union-attr]
            index = (probs[:, 1] >= self.threshold).astype(np.int64)
        else:
            if use_onnx:
                return onnx_labels.reshape(len(onnx_labels)).tolist()  # type: ignore[union-attr]
            index = probs.argmax(axis=1)
        if classes is not None and len(classes) == n_classes:
            return [classes[i] for i in index.tolist()]
        return index.tolist()

    @staticmethod
    def _unzip(records: list[dict[Any, float]]) -> tuple[np.ndarray, list[Any]]:
        """A ZipMap output (one ``{class: probability}`` per record, skl2onnx's default for
        classifiers) as a probability matrix and its classes, in the graph's class order."""
        if not records:
            return np.zeros((0, 0), dtype=np.float32), []
        keys = list(records[0])
        return np.array([[row[k] for k in keys] for row in records], dtype=np.float32), keys

    def _classifier(self, outputs: dict[str, np.ndarray], accept: str) -> bytes | list[Any]:
        raw = outputs[self.prob_name]
        classes = self.classes
        if isinstance(raw, list):
            probs, zip_classes = self._unzip(raw)
            classes = classes or zip_classes
        else:
            probs = np.asarray(raw)
        if probs.ndim == 2 and probs.shape[1] == 1:
            probs = probs.reshape(probs.shape[0])
        if probs.ndim == 1:
            probs = np.stack([1.0 - probs, probs], axis=1).astype(np.float32)
        onnx_labels = outputs.get(self.label_name) if self.label_name else None
        binary = probs.shape[1] == 2 and self.task != "multiclass_classification"
        fmt = self.format
        if accept == contract.NPY:
            return codecs.encode_npy(probs[:, 1] if binary and fmt == "xgboost" else probs)
        labels = self._labels(probs, onnx_labels, classes)
        if fmt == "xgboost":
            scores = probs[:, 1] if binary else probs
            if accept == contract.CSV:
                return codecs.encode_csv(scores)
            records = [{"score": s} for s in scores.tolist()]
        elif fmt == "linear-learner":
            if accept == contract.CSV:
                if binary:
                    rows = [[label, p] for label, p in zip(labels, probs[:, 1].tolist())]
                else:
                    rows = [[label, *p] for label, p in zip(labels, probs.tolist())]
                return codecs.encode_csv(rows)
            scores_list = probs[:, 1].tolist() if binary else probs.tolist()
            records = [{"score": s, "predicted_label": label} for s, label in zip(scores_list, labels)]
        else:
            if accept == contract.CSV:
                return codecs.encode_csv([[label, *p] for label, p in zip(labels, probs.tolist())])
            records = [{"label": label, "probabilities": p} for label, p in zip(labels, probs.tolist())]
        return records

    # -- regression / generic ---------------------------------------------------------------

    def _regressor(self, values: np.ndarray, accept: str) -> bytes | list[Any]:
        if values.ndim == 2 and values.shape[1] == 1:
            values = values.reshape(values.shape[0])
        if accept == contract.NPY:
            return codecs.encode_npy(values)
        if accept == contract.CSV:
            return codecs.encode_csv(values)
        if self.format in ("xgboost", "linear-learner"):
            records: list[Any] = [{"score": v} for v in values.tolist()]
        else:
            records = values.tolist()
        return records

    def _generic(self, outputs: dict[str, np.ndarray], accept: str) -> bytes | list[Any]:
        if len(outputs) == 1:
            return self._regressor(np.asarray(next(iter(outputs.values()))), accept)
        if accept == contract.NPY:
            raise NotAcceptableError("application/x-npy needs a single output; this model has several")
        lengths = {np.shape(value)[0] if np.ndim(value) else None for value in outputs.values()}
        if accept == contract.JSON and len(lengths) != 1:
            return codecs.encode_json({"outputs": {name: np.asarray(v).tolist() for name, v in outputs.items()}})
        if len(lengths) != 1 or None in lengths:
            raise NotAcceptableError("outputs of different lengths can only be answered as JSON")
        n = lengths.pop()
        columns = {name: np.asarray(value).tolist() for name, value in outputs.items()}
        records = [{name: column[i] for name, column in columns.items()} for i in range(n)]
        if accept == contract.CSV:
            rows = []
            for record in records:
                row: list[Any] = []
                for value in record.values():
                    row.extend(value if isinstance(value, list) else [value])
                rows.append(row)
            return codecs.encode_csv(rows)
        return records

    def _shape(self, outputs: dict[str, Any], accept: str) -> bytes | list[Any]:
        """The finished answer (CSV, npy, or a JSON shape that is not one record per row), or the
        answer's records, one per row, for :meth:`_wrap`."""
        if self.prob_name and self.task != "regression":
            return self._classifier(outputs, accept)
        if self.task == "regression":
            name = self.output_names[0] if len(self.output_names) == 1 else (self.prob_name or self.output_names[0])
            return self._regressor(np.asarray(outputs[name]), accept)
        return self._generic(outputs, accept)

    @staticmethod
    def _wrap(records: list[Any], accept: str) -> bytes:
        if accept == contract.JSONLINES:
            return codecs.encode_jsonlines(records)
        return codecs.encode_json({"predictions": records})

    def encode(self, outputs: dict[str, Any], accept: str) -> bytes:
        """Bytes of ``outputs`` for the (already resolved) ``accept``."""
        shaped = self._shape(outputs, accept)
        return shaped if isinstance(shaped, bytes) else self._wrap(shaped, accept)

    def encode_split(
        self, outputs: dict[str, Any], accepts: Sequence[str], counts: Sequence[int]
    ) -> list[bytes | Exception]:
        """One answer per request of a shared run, in order: request ``i`` had ``counts[i]`` of the
        records in ``outputs`` and asked for ``accepts[i]``. Each answer equals :meth:`encode` of the
        request's own rows, or is the exception that encoding raised. When all ask for JSON (Lines),
        the records are built once for all rows and then wrapped per request."""
        accept = accepts[0]
        if accept in (contract.JSON, contract.JSONLINES) and accepts.count(accept) == len(accepts):
            try:
                shaped = self._shape(outputs, accept)
            except Exception:  # each request meets the error below
                shaped = None
            # a record each (the usual batch): wrapped directly, ≈ 1 µs per request less than the loop below
            if isinstance(shaped, list) and len(shaped) == len(counts) == counts.count(1):
                if accept == contract.JSON:
                    return [codecs.encode_json({"predictions": [record]}) for record in shaped]
                return [codecs.encode_json(record) + b"\n" for record in shaped]
            if isinstance(shaped, list) and len(shaped) == sum(counts):
                answers: list[bytes | Exception] = []
                start = 0
                for count in counts:
                    answers.append(self._wrap(shaped[start : start + count], accept))
                    start += count
                return answers
        answers = []
        start = 0
        for accept, count in zip(accepts, counts):
            end = start + count
            try:
                answers.append(self.encode({name: value[start:end] for name, value in outputs.items()}, accept))
            except Exception as exc:
                answers.append(exc)
            start = end
        return answers


# ---------------------------------------------------------------------------------------------
# handlers


class DefaultHandler:
    """``model.onnx`` with validation and SageMaker-shaped answers; no user code."""

    def __init__(self, model_dir: Path, *, intra_op_threads: int, use_gpu: bool | None, default_accept: str) -> None:
        self.model_dir = model_dir
        self.model = OnnxModel(model_dir / contract.MODEL_FILE, intra_op_threads=intra_op_threads, use_gpu=use_gpu)
        self.signature = Signature()
        self.default_accept = default_accept
        self.formatter: ResponseFormatter | None = None

    def load(self) -> None:
        """Read the signature and create the session."""
        self.signature = Signature.load(self.model_dir)
        self.model.load()
        self.formatter = ResponseFormatter(self.signature, self.model.output_names, self.default_accept)

    def warmup(self) -> None:
        """One prediction on zeros, encoded in the default format."""
        assert self.formatter is not None
        outputs = self.model.predict(self.model.warmup_feeds())
        self.formatter.encode(outputs, self.formatter.default_accept)

    def invoke(
        self, body: bytes, content_type: str, accept: str | None, headers: dict[str, str] | None
    ) -> tuple[bytes, str, str | None, float]:
        """Decode → validate → run → encode; returns (body, content type, custom attributes, model seconds)."""
        formatter = self.formatter
        assert formatter is not None
        ctype = contract.normalise_content_type(content_type) or contract.CSV
        answer_type = formatter.accept(accept)  # 406 before any work
        data = codecs.decode(body, ctype, self.model.input_dtype)
        feeds = self.model.validate(data)
        started = time.perf_counter()
        outputs = self.model.predict(feeds)
        model_seconds = time.perf_counter() - started
        return formatter.encode(outputs, answer_type), answer_type, None, model_seconds

    def invoke_many(
        self, requests: Sequence[tuple[bytes, str | None, str | None]]
    ) -> list[InvocationResult | Exception]:
        """Answer several requests, running the model once for all whose records stack.

        Requests whose records have the same inputs (names, dtypes, trailing dimensions) are
        concatenated on the batch axis and run together; outputs are split back by each request's
        record count. One-record CSV bodies are also parsed together, as one table.
        Whatever fails in a shared step is redone per request, so a bad request gets exactly the
        error :meth:`invoke` would give it and the others their answers. The model seconds of a
        shared run are divided among its requests. Answers equal :meth:`invoke`'s up to float
        rounding: a kernel may sum in a different order for a larger batch.
        """
        if len(requests) > 1 and self.model.stackable:
            answered = self._invoke_records(requests)
            if answered is not None:
                return answered
        formatter = self.formatter
        model = self.model
        assert formatter is not None
        answers: list[InvocationResult | Exception | None] = [None] * len(requests)
        blocks: list[_Block] = []
        records: list[tuple[int, str, bytes]] = []  # one-record CSV bodies, parsed together
        others: list[tuple[int, str, bytes, str]] = []
        stackable = model.stackable
        for index, (body, content_type, accept) in enumerate(requests):
            try:
                answer_type = formatter.accept(accept)  # choose_accept caches what it resolved
            except Exception as exc:
                answers[index] = exc
                continue
            ctype = contract.normalise_content_type(content_type) or contract.CSV
            if stackable and ctype == contract.CSV:
                record = body.strip()
                if record and b"\n" not in record and b"\r" not in record:
                    records.append((index, answer_type, record))
                    continue
            others.append((index, ctype, body, answer_type))
        if len(records) > 1:
            try:
                table = codecs.decode_csv_records([r[2] for r in records], model.input_dtype)
                if table is None:  # not reached: each record is one non-empty line
                    raise ValueError("records are not one row each")
                feeds = model.validate(table)
            except Exception:  # some record is bad: each request finds out which on its own (below)
                others.extend((index, contract.CSV, record, answer_type) for index, answer_type, record in records)
            else:
                blocks.append(_Block([r[0] for r in records], [r[1] for r in records], [1] * len(records), feeds))
        elif records:
            index, answer_type, record = records[0]
            others.append((index, contract.CSV, record, answer_type))
        grouped: dict[tuple[Any, ...], list[tuple[int, str, int, dict[str, np.ndarray]]]] = {}
        for index, ctype, body, answer_type in others:
            try:
                feeds = model.validate(codecs.decode(body, ctype, model.input_dtype))
            except Exception as exc:
                answers[index] = exc
                continue
            if not model.stackable:
                blocks.append(_Block([index], [answer_type], [0], feeds))
                continue
            key = tuple((name, array.dtype, array.shape[1:]) for name, array in feeds.items())
            grouped.setdefault(key, []).append((index, answer_type, len(next(iter(feeds.values()))), feeds))
        for group in grouped.values():
            parts = [member[3] for member in group]
            stacked = parts[0] if len(parts) == 1 else {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
            blocks.append(_Block([m[0] for m in group], [m[1] for m in group], [m[2] for m in group], stacked))
        for block in blocks:
            self._run_block(block, answers)
        return answers  # type: ignore[return-value]

    def _invoke_records(
        self, requests: Sequence[tuple[bytes, str | None, str | None]]
    ) -> list[InvocationResult | Exception] | None:
        """The usual batch of concurrent real-time requests: one CSV record each, all with the same
        Content-Type and Accept — one table, one model run, one encoding of the records' answers.
        None when the batch is any other or a shared step fails; :meth:`invoke_many`'s general path
        then finds each request's own answer or error. The run and encoding are :meth:`_run_block`'s,
        written out: going through a block costs ≈ 3 µs per request in the server (measured), and this
        is the batch-1 hot path."""
        formatter = self.formatter
        model = self.model
        assert formatter is not None
        _, content_type, accept = requests[0]
        records = []
        for body, other_type, other_accept in requests:
            if other_type != content_type or other_accept != accept:
                return None
            records.append(body.strip())
        if (contract.normalise_content_type(content_type) or contract.CSV) != contract.CSV:
            return None
        n = len(records)
        try:
            answer_type = formatter.accept(accept)
            table = codecs.decode_csv_records(records, model.input_dtype)
            if table is None:
                return None
            feeds = model.validate(table)
            started = time.perf_counter()
            outputs = model.predict(feeds)
            seconds = (time.perf_counter() - started) / n
            for value in outputs.values():
                if len(value) != n:
                    return None
        except Exception:
            return None
        bodies = formatter.encode_split(outputs, [answer_type] * n, [1] * n)
        return [
            body if isinstance(body, Exception) else InvocationResult(body, answer_type, None, seconds) for body in bodies
        ]

    def _run_block(self, block: _Block, answers: list[Any]) -> None:
        """One model run for ``block``, its answers into ``answers``; per request when that fails."""
        formatter = self.formatter
        assert formatter is not None
        single = len(block.indices) == 1
        total = sum(block.counts)
        started = time.perf_counter()
        try:
            outputs = self.model.predict(block.feeds)
            if not single:
                for value in outputs.values():
                    if len(value) != total:  # a 0-d output raises TypeError: no records either
                        raise ValueError("outputs do not split by record")
        except Exception as exc:
            if single:
                answers[block.indices[0]] = exc
                return
            for alone in block.split():  # each request meets its own error (or answer)
                self._run_block(alone, answers)
            return
        seconds = (time.perf_counter() - started) / len(block.indices)
        if single:  # the whole output is this request's (its record count may be unknown)
            try:
                answers[block.indices[0]] = InvocationResult(
                    formatter.encode(outputs, block.answer_types[0]), block.answer_types[0], None, seconds
                )
            except Exception as exc:
                answers[block.indices[0]] = exc
            return
        bodies = formatter.encode_split(outputs, block.answer_types, block.counts)
        for index, answer_type, body in zip(block.indices, block.answer_types, bodies):
            answers[index] = body if isinstance(body, Exception) else InvocationResult(body, answer_type, None, seconds)


class _Block(NamedTuple):
    """Requests whose records run together: their indices, answer types, record counts and the
    feeds of all of them, concatenated on the batch axis in that order."""

    indices: list[int]
    answer_types: list[str]
    counts: list[int]
    feeds: dict[str, np.ndarray]

    def split(self) -> list[_Block]:
        """One block per request."""
        out = []
        start = 0
        for index, answer_type, count in zip(self.indices, self.answer_types, self.counts):
            end = start + count
            out.append(_Block([index], [answer_type], [count], {name: value[start:end] for name, value in self.feeds.items()}))
            start = end
        return out


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
        self, model_dir: Path, module: Any, *, intra_op_threads: int, use_gpu: bool | None, default_accept: str
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
        self.default.load()
        return self.default.model

    def default_input_fn(self, input_data: Any, content_type: str) -> Any:
        ctype = contract.normalise_content_type(content_type) or contract.CSV
        if isinstance(input_data, str):
            input_data = input_data.encode("utf-8")
        if ctype == contract.NPZ:
            from sagemaker_inference import decoder

            try:
                return decoder.decode(input_data, contract.NPZ)
            except Exception as exc:  # scipy/zipfile raise many types for a body that is not save_npz output
                raise BadRequestError(
                    f"malformed application/x-npz body (expected scipy.sparse.save_npz output): {type(exc).__name__}: {exc}"
                ) from None
        dtype = self.model.input_dtype if isinstance(self.model, OnnxModel) else np.float32
        return codecs.decode(input_data, ctype, dtype)

    def default_predict_fn(self, data: Any, model: Any) -> Any:
        if isinstance(model, OnnxModel):
            return Prediction(model.predict(model.validate(data)))
        if hasattr(model, "predict"):
            return model.predict(data)
        if callable(model):
            return model(data)
        raise TypeError("the model returned by model_fn has no predict() and is not callable; define predict_fn")

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
            return codecs.encode_csv(np.asarray(prediction) if not isinstance(prediction, list) else prediction), answer_type
        return codecs.encode_npy(prediction), answer_type

    def default_transform_fn(self, model: Any, input_data: Any, content_type: str, accept: str, context: Context) -> Any:
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


def user_program(model_dir: Path, program: str | None) -> Path | None:
    """``code/<program>`` (SAGEMAKER_PROGRAM, default inference.py) if it exists; a named one must."""
    name = program or contract.DEFAULT_PROGRAM
    if not name.endswith(".py"):
        name += ".py"
    path = model_dir / contract.CODE_DIR / name
    if path.is_file():
        return path
    if program:
        raise ModelLoadError(f"SAGEMAKER_PROGRAM={program!r} but {contract.CODE_DIR}/{name} is not in the model")
    return None


def build_handler(
    model_dir: Path, *, program: str | None, intra_op_threads: int, use_gpu: bool | None, default_accept: str
) -> DefaultHandler | HooksHandler:
    """The hooks handler when the model carries user code, else the default ONNX handler."""
    path = user_program(model_dir, program)
    if path is None:
        return DefaultHandler(model_dir, intra_op_threads=intra_op_threads, use_gpu=use_gpu, default_accept=default_accept)
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
    "Prediction",
    "ResponseFormatter",
    "UnsupportedMediaTypeError",
    "build_handler",
]
