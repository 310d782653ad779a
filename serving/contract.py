"""The literals of the SageMaker container contract and of selfmaker's model directory (docs/contracts.md).

Content types, header names, file names, and :class:`Signature` — the parsed ``signature.json`` a
training job writes next to ``model.onnx``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.errors import ModelLoadError

CSV = "text/csv"
JSON = "application/json"
JSONLINES = "application/jsonlines"
NPY = "application/x-npy"
NPZ = "application/x-npz"
#: SageMaker's RecordIO-framed protobuf ``Record``s (common/recordio.py); linear-learner's SDK default
RECORDIO = "application/x-recordio-protobuf"
#: ``label index:value ...`` lines, as xgboost reads them (0-based indices)
LIBSVM = "text/libsvm"
ANY = "*/*"

#: Accepted spellings of each content type, normalised to the canonical one.
CONTENT_TYPE_ALIASES: dict[str, str] = {
    "text/csv": CSV,
    "text/x-csv": CSV,
    "application/csv": CSV,
    "application/json": JSON,
    "application/jsonlines": JSONLINES,
    "application/x-jsonlines": JSONLINES,
    "application/jsonl": JSONLINES,
    "application/x-ndjson": JSONLINES,
    "application/x-npy": NPY,
    "application/npy": NPY,
    "application/x-npz": NPZ,
    "application/x-recordio-protobuf": RECORDIO,
    "application/recordio-protobuf": RECORDIO,
    "text/libsvm": LIBSVM,
    "text/x-libsvm": LIBSVM,
    "application/x-libsvm": LIBSVM,
}
#: Content types the default handler decodes and encodes.
DECODABLE = (CSV, JSON, JSONLINES, NPY, RECORDIO, LIBSVM)
ENCODABLE = (JSON, CSV, JSONLINES, NPY)
#: what the answers of the built-ins' response formats (xgboost, linear-learner) may also be: their
#: records (``score``, ``predicted_label``) as the ``label`` map of RecordIO-protobuf ``Record``s
RECORD_ENCODABLE = (*ENCODABLE, RECORDIO)
#: Content types the toolkit hands to hooks as ``str`` rather than ``bytes``
#: (sagemaker_inference.content_types.UTF8_TYPES).
UTF8_TYPES = (JSON, CSV, JSONLINES)

CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"
MAX_CUSTOM_ATTRIBUTES_LEN = 1024

MODEL_FILE = "model.onnx"
SIGNATURE_FILE = "signature.json"
CODE_DIR = "code"
DEFAULT_PROGRAM = "inference.py"
REQUIREMENTS_FILE = "requirements.txt"

RESPONSE_FORMATS = ("default", "xgboost", "linear-learner")
TASKS = ("regression", "binary_classification", "multiclass_classification")


def normalise_content_type(value: str | None) -> str:
    """Lower-case media type without parameters, mapped through :data:`CONTENT_TYPE_ALIASES`."""
    if not value:
        return ""
    known = CONTENT_TYPE_ALIASES.get(value)
    if known is not None:
        return known
    media = value.split(";", 1)[0].strip().lower()
    return CONTENT_TYPE_ALIASES.get(media, media)


def sanitize_header(value: str) -> str:
    """Strip CR/LF (header injection) and cap the custom-attributes length SageMaker allows."""
    return value.replace("\r", " ").replace("\n", " ")[:MAX_CUSTOM_ATTRIBUTES_LEN]


@dataclass(frozen=True)
class Signature:
    """``signature.json`` of a model directory; every member optional but ``format``."""

    format: int = 1
    framework: str | None = None
    task: str | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    classes: list[Any] | None = None
    threshold: float = 0.5
    response_format: str = "default"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Signature:
        """Validate and build; a bad value is a :class:`ModelLoadError` naming the key."""
        if not isinstance(data, dict):
            raise ModelLoadError("signature.json must hold a JSON object")
        fmt = data.get("format", 1)
        if fmt != 1:
            raise ModelLoadError(f"signature.json: unsupported format {fmt!r} (expected 1)")
        task = data.get("task")
        if task is not None and task not in TASKS:
            raise ModelLoadError(f"signature.json: task {task!r} is not one of {', '.join(TASKS)}")
        response_format = data.get("response_format") or "default"
        if response_format not in RESPONSE_FORMATS:
            raise ModelLoadError(
                f"signature.json: response_format {response_format!r} is not one of "
                f"{', '.join(RESPONSE_FORMATS)}"
            )
        classes = data.get("classes")
        if classes is not None and not isinstance(classes, list):
            raise ModelLoadError("signature.json: classes must be a list")
        threshold = data.get("threshold", 0.5)
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool):
            raise ModelLoadError("signature.json: threshold must be a number")
        inputs = data.get("inputs") or []
        if not isinstance(inputs, list):
            raise ModelLoadError("signature.json: inputs must be a list")
        return cls(
            format=1,
            framework=data.get("framework"),
            task=task,
            inputs=inputs,
            classes=classes,
            threshold=float(threshold),
            response_format=response_format,
        )

    @classmethod
    def load(cls, model_dir: str | Path) -> Signature:
        """Read ``<model_dir>/signature.json``, or the defaults when it is absent."""
        path = Path(model_dir) / SIGNATURE_FILE
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"signature.json is not valid JSON: {exc}") from exc
        return cls.from_dict(data)
