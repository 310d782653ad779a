"""The ONNX Runtime model: one session per worker process, input validation against the graph.

:class:`OnnxModel` exposes ``load()``, ``predict()`` and ``ready``; ``validate()`` checks names, dtypes
and shapes of the inputs before anything runs so bad input is a 400 that says what is wrong.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving.errors import BadRequestError, ModelLoadError

log = logging.getLogger(__name__)

#: ONNX tensor type strings → numpy dtypes.
ONNX_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
    "tensor(string)": np.object_,
}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, numpy dtype, shape (``None`` for a free dimension)."""

    name: str
    dtype: Any
    shape: tuple[int | None, ...]

    def describe(self) -> str:
        dims = ", ".join("N" if d is None else str(d) for d in self.shape)
        return f"{self.name} {np.dtype(self.dtype).name}[{dims}]"


def _spec(node: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in (node.shape or ()))
    return TensorSpec(node.name, ONNX_DTYPES.get(node.type, np.object_), shape)


def _stackable(nodes: list[Any]) -> bool:
    """Whether records of several requests can be concatenated into one run: the single input has a
    free leading dimension, or every input has the same named one (``N``, ``batch``...), which says
    they share the batch axis. A second input with its own free first dimension (a sequence, a
    parameter vector) may not be per-record, so such models run each request alone."""
    firsts = [node.shape[0] if node.shape else 0 for node in nodes]
    if not firsts or any(isinstance(first, int) for first in firsts):
        return False
    return len(nodes) == 1 or (bool(firsts[0]) and all(first == firsts[0] for first in firsts))


def default_providers(use_gpu: bool | None) -> list[str]:
    """CUDA first when onnxruntime offers it (unless disabled), CPU always."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    providers = []
    if use_gpu is not False and "CUDAExecutionProvider" in available:
        providers.append("CUDAExecutionProvider")
    providers.append("CPUExecutionProvider")
    return providers


class OnnxModel:
    """An ONNX graph behind one ``onnxruntime.InferenceSession``."""

    def __init__(self, path: str | Path, *, intra_op_threads: int = 1, use_gpu: bool | None = None) -> None:
        self.path = Path(path)
        self.intra_op_threads = intra_op_threads
        self.use_gpu = use_gpu
        self.session: Any = None
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.output_names: list[str] = []
        self._run: Any = None
        self._run_options: Any = None
        self.stackable = False

    @property
    def ready(self) -> bool:
        """True once the session exists."""
        return self.session is not None

    def load(self) -> OnnxModel:
        """Create the session; a missing or invalid graph is a :class:`ModelLoadError`."""
        import onnxruntime as ort

        if not self.path.is_file():
            raise ModelLoadError(f"{self.path.name} not found in {self.path.parent}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # spinning intra-op threads burn the cores other workers need
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = default_providers(self.use_gpu)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own C++-bound exception types
            raise ModelLoadError(f"onnxruntime cannot load {self.path.name}: {exc}") from exc
        self.inputs = [_spec(node) for node in self.session.get_inputs()]
        self.outputs = [_spec(node) for node in self.session.get_outputs()]
        self.output_names = [spec.name for spec in self.outputs]
        self.stackable = _stackable(self.session.get_inputs())
        # the binding under InferenceSession.run skips per-call Python-side checks we already did
        self._run = getattr(self.session, "_sess", self.session).run
        self._run_options = None
        if hasattr(self.session, "_sess"):
            self._run_options = ort.RunOptions()
        log.info(
            "loaded %s with %s; inputs: %s; outputs: %s",
            self.path.name,
            ",".join(self.session.get_providers()),
            "; ".join(spec.describe() for spec in self.inputs),
            "; ".join(spec.describe() for spec in self.outputs),
        )
        return self

    @property
    def input_dtype(self) -> Any:
        """dtype a decoder should produce: the single input's, else float32."""
        if len(self.inputs) == 1 and self.inputs[0].dtype is not np.object_:
            return self.inputs[0].dtype
        return np.float32

    @property
    def feature_width(self) -> int | None:
        """The feature count of a single ``[N, width]`` input (what sparse request rows are filled to)."""
        if len(self.inputs) == 1 and len(self.inputs[0].shape) == 2:
            return self.inputs[0].shape[1]
        return None

    def validate(self, data: Any) -> dict[str, np.ndarray]:
        """Check ``data`` (array or {name: array}) against the graph inputs; return the feed dict."""
        if isinstance(data, dict):
            expected = {spec.name for spec in self.inputs}
            missing = sorted(expected - data.keys())
            unknown = sorted(data.keys() - expected)
            if unknown:
                raise BadRequestError(
                    f"unknown input(s) {', '.join(map(repr, unknown))}; the model takes "
                    + ", ".join(spec.describe() for spec in self.inputs)
                )
            if missing:
                raise BadRequestError(f"missing input(s) {', '.join(map(repr, missing))}")
            return {spec.name: self._check(spec, data[spec.name]) for spec in self.inputs}
        if len(self.inputs) != 1:
            raise BadRequestError(
                "this model has several inputs ("
                + ", ".join(spec.describe() for spec in self.inputs)
                + '); send JSON {"inputs": {name: array}}'
            )
        spec = self.inputs[0]
        return {spec.name: self._check(spec, data)}

    def _check(self, spec: TensorSpec, value: Any) -> np.ndarray:
        array = value if isinstance(value, np.ndarray) else np.asarray(value)
        if array.dtype != spec.dtype:
            array = self._cast(spec, array)
        rank = len(spec.shape)
        if rank and array.ndim == rank - 1 and spec.shape[0] is None:
            array = array.reshape((1,) + array.shape)  # a single record without the batch dimension
        if rank and array.ndim != rank:
            raise BadRequestError(
                f"input {spec.name!r} expects {rank} dimensions {spec.describe()}, got shape "
                f"{list(array.shape)}"
            )
        for axis, (want, got) in enumerate(zip(spec.shape, array.shape, strict=True)):
            if want is not None and want != got:
                what = "features" if axis == rank - 1 and rank == 2 else f"elements on axis {axis}"
                raise BadRequestError(
                    f"input {spec.name!r} expects {want} {what}, got {got} ({spec.describe()})"
                )
        if array.shape and array.shape[0] == 0:
            raise BadRequestError(f"input {spec.name!r} has no records")
        return array

    @staticmethod
    def _cast(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
        want = np.dtype(spec.dtype)
        kind = array.dtype.kind
        if want.kind == "O":
            return array.astype(np.object_)
        if kind in "OUSV":
            raise BadRequestError(
                f"input {spec.name!r} expects {want.name} numbers, got {array.dtype.name} values"
            )
        if (
            want.kind in "iu"
            and kind == "f"
            and (not np.all(np.isfinite(array)) or not np.all(np.mod(array, 1) == 0))
        ):
            raise BadRequestError(
                f"input {spec.name!r} expects integers ({want.name}), got fractional values"
            )
        if want.kind == "b" and kind not in "biu":
            raise BadRequestError(f"input {spec.name!r} expects booleans, got {array.dtype.name}")
        try:
            return array.astype(want, copy=False)
        except (ValueError, TypeError, OverflowError) as exc:
            raise BadRequestError(f"input {spec.name!r} cannot be converted to {want.name}: {exc}") from None

    def predict(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the session on validated ``feeds``; returns {output name: array}."""
        if self._run_options is not None:
            results = self._run(self.output_names, feeds, self._run_options)
        else:
            results = self._run(self.output_names, feeds)
        return dict(zip(self.output_names, results, strict=True))

    def warmup_feeds(self) -> dict[str, np.ndarray]:
        """One zero-filled record per input (free dimensions set to 1) for the warm-up prediction."""
        feeds = {}
        for spec in self.inputs:
            shape = tuple(1 if d is None else d for d in spec.shape)
            if spec.dtype is np.object_:
                feeds[spec.name] = np.full(shape, "", dtype=np.object_)
            else:
                feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
        return feeds
