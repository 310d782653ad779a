"""A CreateTransformJob request (botocore shape) turned into a validated, picklable :class:`TransformSpec`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from batch.errors import TransformRequestError
from batch.jsonpath import JsonPath, parse_jsonpath
from common import uris

SPLIT_TYPES = ("None", "Line", "RecordIO", "TFRecord")
STRATEGIES = ("SingleRecord", "MultiRecord")
#: SageMaker's defaults (ModelClientConfig, MaxPayloadInMB)
DEFAULT_TIMEOUT_S = 600
DEFAULT_RETRIES = 3
DEFAULT_PAYLOAD_MB = 6


def media_kind(media_type: str | None) -> str:
    """``"csv"``, ``"json"`` (JSON and JSON Lines) or ``"other"`` for a Content-Type/Accept value."""
    base = (media_type or "").split(";")[0].strip().lower()
    if base in ("text/csv", "text/x-csv", "application/csv"):
        return "csv"
    if base in (
        "application/json",
        "application/jsonlines",
        "application/x-jsonlines",
        "application/json-lines",
        "application/jsonl",
    ):
        return "json"
    return "other"


@dataclass(frozen=True)
class TransformSpec:
    """Everything the engine needs from a CreateTransformJob request, validated.

    ``batch_strategy``, ``max_payload_mb`` and ``max_concurrent`` are None when the request leaves them
    to the container's ``/execution-parameters`` (precedence: job > container > defaults).
    """

    job_name: str
    input_uri: str
    data_type: str = "S3Prefix"
    content_type: str | None = None
    compression: str = "None"
    split_type: str = "None"
    output_path: str = ""
    accept: str | None = None
    assemble_with: str = "None"
    batch_strategy: str | None = None
    max_payload_mb: int | None = None
    max_concurrent: int | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_retries: int = DEFAULT_RETRIES
    input_filter: str = "$"
    output_filter: str = "$"
    join_source: str = "None"
    environment: dict[str, str] = field(default_factory=dict)

    # -- derived -----------------------------------------------------------------------------------

    @property
    def input_kind(self) -> str:
        """Record format of the input (``csv``, ``json`` or ``other``)."""
        return media_kind(self.content_type)

    @property
    def output_kind(self) -> str:
        """Record format of the model's answers (from Accept, else the input's)."""
        return media_kind(self.accept) if self.accept else self.input_kind

    @property
    def record_processing(self) -> bool:
        """True when records must be parsed one by one (filters or join)."""
        return self.input_filter != "$" or self.output_filter != "$" or self.join_source == "Input"

    def input_path(self) -> JsonPath:
        """The parsed InputFilter."""
        return parse_jsonpath(self.input_filter)

    def output_path_filter(self) -> JsonPath:
        """The parsed OutputFilter."""
        return parse_jsonpath(self.output_filter)

    def with_execution_parameters(self, params: dict[str, Any]) -> TransformSpec:
        """Fill the fields the job left unset from a container's ``/execution-parameters`` answer."""

        def pick(*names: str) -> Any:
            for name in names:
                if params.get(name) is not None:
                    return params[name]
            return None

        changes: dict[str, Any] = {}
        if self.batch_strategy is None:
            strategy = str(pick("BatchStrategy", "BATCH_STRATEGY") or "").upper().replace("_", "")
            if strategy in ("MULTIRECORD", "SINGLERECORD"):
                changes["batch_strategy"] = "MultiRecord" if strategy == "MULTIRECORD" else "SingleRecord"
        if self.max_payload_mb is None:
            value = pick("MaxPayloadInMB", "MAX_PAYLOAD_IN_MB")
            if isinstance(value, int) and 0 <= value <= 100:
                changes["max_payload_mb"] = value
        if self.max_concurrent is None:
            value = pick("MaxConcurrentTransforms", "MAX_CONCURRENT_TRANSFORMS")
            if isinstance(value, int) and value >= 1:
                changes["max_concurrent"] = value
        return dataclasses.replace(self, **changes) if changes else self

    def resolved(self) -> TransformSpec:
        """The spec with SageMaker's defaults for whatever is still unset."""
        return dataclasses.replace(
            self,
            batch_strategy=self.batch_strategy or "SingleRecord",
            max_payload_mb=DEFAULT_PAYLOAD_MB if self.max_payload_mb is None else self.max_payload_mb,
            max_concurrent=self.max_concurrent or 1,
        )

    def payload_limit(self) -> int:
        """Bytes per request (MaxPayloadInMB; 0 = no limit → the default size for mini-batches)."""
        mb = self.max_payload_mb if self.max_payload_mb else DEFAULT_PAYLOAD_MB
        return mb * 1024 * 1024

    def container_environment(self) -> dict[str, str]:
        """Environment of the model server: the job's Environment plus the batch variables SageMaker sets."""
        env = dict(self.environment)
        env["SAGEMAKER_BATCH"] = "true"
        if self.max_payload_mb:
            env["SAGEMAKER_MAX_PAYLOAD_IN_MB"] = str(self.max_payload_mb)
        if self.batch_strategy:
            env["SAGEMAKER_BATCH_STRATEGY"] = (
                "MULTI_RECORD" if self.batch_strategy == "MultiRecord" else "SINGLE_RECORD"
            )
        if self.max_concurrent:
            env["SAGEMAKER_MAX_CONCURRENT_TRANSFORMS"] = str(self.max_concurrent)
        return env

    def fingerprint(self) -> dict[str, Any]:
        """The members that decide the output bytes (a resumed job must match them)."""
        data = dataclasses.asdict(self)
        data.pop("timeout_s")
        data.pop("max_retries")
        return data


def _enum(value: Any, allowed: tuple[str, ...], member: str, default: str) -> str:
    if value is None:
        return default
    if value not in allowed:
        raise TransformRequestError(
            f"Value '{value}' at '{member}' failed to satisfy constraint: Member must satisfy enum "
            f"value set: [{', '.join(allowed)}]"
        )
    return str(value)


def _int(value: Any, member: str, lo: int, hi: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TransformRequestError(f"'{member}' must be an integer")
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise TransformRequestError(
            f"Value {value} at '{member}' failed to satisfy constraint: must be {bound}"
        )
    return value


def _uri(value: Any, member: str) -> str:
    if not isinstance(value, str) or not value:
        raise TransformRequestError(f"'{member}' is required")
    if not uris.is_uri(value):
        raise TransformRequestError(f"'{member}' must be an s3:// or file:// URI, got {value!r}")
    if uris.is_s3(value):
        try:
            uris.split_s3(value)
        except uris.UriError:
            raise TransformRequestError(f"'{member}' has no bucket: {value!r}") from None
    return value


def parse_request(request: dict[str, Any]) -> TransformSpec:
    """Validate a CreateTransformJob request and return its :class:`TransformSpec`.

    Raises :class:`TransformRequestError` with a message naming the member at fault.
    """
    if not isinstance(request, dict):
        raise TransformRequestError("the request must be a JSON object")
    name = request.get("TransformJobName") or "transform-job"
    tin = request.get("TransformInput")
    tout = request.get("TransformOutput")
    if not isinstance(tin, dict):
        raise TransformRequestError("'TransformInput' is required")
    if not isinstance(tout, dict):
        raise TransformRequestError("'TransformOutput' is required")
    s3 = (tin.get("DataSource") or {}).get("S3DataSource")
    if not isinstance(s3, dict):
        raise TransformRequestError("'TransformInput.DataSource.S3DataSource' is required")
    data_type = _enum(
        s3.get("S3DataType"),
        ("S3Prefix", "ManifestFile", "AugmentedManifestFile"),
        "TransformInput.DataSource.S3DataSource.S3DataType",
        "S3Prefix",
    )
    if data_type == "AugmentedManifestFile":
        raise TransformRequestError("S3DataType AugmentedManifestFile is not supported by batch transform")
    input_uri = _uri(s3.get("S3Uri"), "TransformInput.DataSource.S3DataSource.S3Uri")
    output_path = _uri(tout.get("S3OutputPath"), "TransformOutput.S3OutputPath")
    split = _enum(tin.get("SplitType"), SPLIT_TYPES, "TransformInput.SplitType", "None")
    compression = _enum(
        tin.get("CompressionType"), ("None", "Gzip"), "TransformInput.CompressionType", "None"
    )
    assemble = _enum(tout.get("AssembleWith"), ("None", "Line"), "TransformOutput.AssembleWith", "None")
    strategy = request.get("BatchStrategy")
    if strategy is not None:
        strategy = _enum(strategy, STRATEGIES, "BatchStrategy", "SingleRecord")
    payload = _int(request.get("MaxPayloadInMB"), "MaxPayloadInMB", 0, 100)
    concurrent = _int(request.get("MaxConcurrentTransforms"), "MaxConcurrentTransforms", 0, None) or None
    if payload and concurrent and payload * concurrent > 100:
        raise TransformRequestError("MaxConcurrentTransforms * MaxPayloadInMB must not exceed 100 MB")
    mcc = request.get("ModelClientConfig") or {}
    timeout = _int(
        mcc.get("InvocationsTimeoutInSeconds"), "ModelClientConfig.InvocationsTimeoutInSeconds", 1, 3600
    )
    retries = _int(mcc.get("InvocationsMaxRetries"), "ModelClientConfig.InvocationsMaxRetries", 0, 3)
    dp = request.get("DataProcessing") or {}
    input_filter = dp.get("InputFilter") or "$"
    output_filter = dp.get("OutputFilter") or "$"
    join = _enum(dp.get("JoinSource"), ("Input", "None"), "DataProcessing.JoinSource", "None")
    for member, expr in (
        ("DataProcessing.InputFilter", input_filter),
        ("DataProcessing.OutputFilter", output_filter),
    ):
        if len(expr) > 63:
            raise TransformRequestError(f"'{member}' is longer than 63 characters")
        try:
            parse_jsonpath(expr)
        except ValueError as exc:
            raise TransformRequestError(f"'{member}' {expr!r} is not a supported JSONPath: {exc}") from None
    env = request.get("Environment") or {}
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise TransformRequestError("'Environment' must map strings to strings")
    if len(env) > 16:
        raise TransformRequestError("'Environment' may have at most 16 entries")
    spec = TransformSpec(
        job_name=str(name),
        input_uri=input_uri,
        data_type=data_type,
        content_type=tin.get("ContentType"),
        compression=compression,
        split_type=split,
        output_path=output_path,
        accept=tout.get("Accept"),
        assemble_with=assemble,
        batch_strategy=strategy,
        max_payload_mb=payload,
        max_concurrent=concurrent,
        timeout_s=float(timeout or DEFAULT_TIMEOUT_S),
        max_retries=DEFAULT_RETRIES if retries is None else retries,
        input_filter=input_filter,
        output_filter=output_filter,
        join_source=join,
        environment=dict(env),
    )
    if spec.record_processing:
        if split != "Line":
            raise TransformRequestError(
                "DataProcessing filters and JoinSource need TransformInput.SplitType 'Line'"
            )
        if spec.input_kind == "other":
            raise TransformRequestError(
                "DataProcessing filters and JoinSource need a CSV or JSON TransformInput.ContentType "
                f"(text/csv, application/json, application/jsonlines), got {spec.content_type!r}"
            )
        if (spec.join_source == "Input" or spec.output_filter != "$") and assemble != "Line":
            raise TransformRequestError(
                "JoinSource and OutputFilter need TransformOutput.AssembleWith 'Line'"
            )
    return spec
