"""The analyzer's entry point: a data-quality baselining job or a monitoring execution, configured by the
environment variables SageMaker's Model Monitor sets.

* ``dataset_format`` (JSON): ``{"csv": {"header": true, "output_columns_position": "START"}}`` for a
  baseline dataset, ``{"sagemakerCaptureJson": {"captureIndexNames": ["endpointInput", "endpointOutput"]}}``
  for an endpoint's captured data (``{"json": …}`` and ``{"parquet": …}`` are refused with a message).
* ``dataset_source``: the directory holding the dataset (every file below it, in name order).
* ``output_path``: where ``statistics.json`` and ``constraints.json`` (baselining) or ``statistics.json``
  and ``constraint_violations.json`` (with ``baseline_constraints``) are written.
* ``baseline_constraints`` / ``baseline_statistics``: the baseline's files (a monitoring execution).
* ``start_time`` / ``end_time`` (ISO 8601): the captured records whose ``inferenceTime`` is in
  ``[start_time, end_time)`` are analyzed.

Captured rows are the CSV ``endpointInput`` data of each record (one or more lines); when the baseline has
as many features as the input and output columns together, the output columns come first (SageMaker's
``output_columns_position: START``). Captured rows are matched with the baseline's features by position.
The job's ``ExitMessage`` (``/opt/ml/output/message``) is SageMaker's: ``Completed: Job completed
successfully with no violations.`` or ``CompletedWithViolations: Job completed successfully with N
violations.``; a dataset with no rows fails with ``Job inputs had no data``.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
import os
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from training.monitoring.statistics import Columns, dataset_statistics, suggest_constraints, violations

log = logging.getLogger(__name__)

MESSAGE_FILE = "/opt/ml/output/message"


class AnalyzerError(Exception):
    """A problem with the job's input or configuration: the job fails with this message."""


def _files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    return sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith("."))


def _csv_rows(text: str) -> Iterator[list[str]]:
    for row in csv.reader(io.StringIO(text)):
        if row:
            yield [cell.strip() for cell in row]


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise AnalyzerError(f"invalid time {value!r}: {exc}") from exc


def _payload_text(payload: Mapping[str, Any]) -> str | None:
    """The text of a captured CSV payload (None for other encodings: only CSV data is analyzed)."""
    data = str(payload.get("data") or "")
    encoding = str(payload.get("encoding") or "")
    content_type = str(payload.get("observedContentType") or "").split(";", 1)[0].strip().lower()
    if encoding == "CSV":
        return data
    if encoding == "BASE64" and content_type in ("text/csv", "text/plain", ""):
        try:
            return base64.b64decode(data).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None
    return None


def read_csv(source: Path, header: bool) -> tuple[list[str] | None, list[list[str]]]:
    """(header, rows) of every CSV file under ``source`` (the header of the first file)."""
    names: list[str] | None = None
    rows: list[list[str]] = []
    for path in _files(source):
        file_rows = list(_csv_rows(path.read_text(encoding="utf-8", errors="replace")))
        if header and file_rows:
            names = names or file_rows[0]
            file_rows = file_rows[1:]
        rows.extend(file_rows)
    return names, rows


def read_capture(
    source: Path, start: datetime | None, end: datetime | None, baseline_width: int | None
) -> list[list[str]]:
    """The rows of the captured records under ``source`` whose inferenceTime is in ``[start, end)``."""
    rows: list[list[str]] = []
    for path in _files(source):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                log.warning("skipping a line of %s that is not JSON", path.name)
                continue
            when = _time((record.get("eventMetadata") or {}).get("inferenceTime"))
            if when is not None and ((start and when < start) or (end and when >= end)):
                continue
            data = record.get("captureData") or {}
            text = _payload_text(data.get("endpointInput") or {})
            if text is None:
                continue
            inputs = list(_csv_rows(text))
            outputs = list(_csv_rows(_payload_text(data.get("endpointOutput") or {}) or ""))
            for i, row in enumerate(inputs):
                output = outputs[i] if len(outputs) == len(inputs) else []
                if output and baseline_width == len(row) + len(output):
                    row = output + row
                rows.append(row)
    return rows


def to_columns(names: list[str] | None, rows: list[list[str]]) -> Columns:
    """Named columns of ``rows`` (short rows padded with missing values); unnamed columns are ``_c<i>``."""
    width = max((len(r) for r in rows), default=0)
    labels = list(names or [])
    labels += [f"_c{i}" for i in range(len(labels), width)]
    return [(labels[i], [r[i] if i < len(r) else "" for r in rows]) for i in range(len(labels))]


def _load_json(path: str) -> dict[str, Any]:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AnalyzerError(f"cannot read {path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise AnalyzerError(f"{path} is not a JSON object")
    return doc


def analyze(env: Mapping[str, str]) -> str:
    """Run the job ``env`` describes; its ExitMessage."""
    try:
        fmt = json.loads(env.get("dataset_format") or '{"csv": {"header": true}}')
    except ValueError as exc:
        raise AnalyzerError(f"dataset_format is not JSON: {exc}") from exc
    source = Path(env.get("dataset_source") or "/opt/ml/processing/input/endpoint")
    output = Path(env.get("output_path") or "/opt/ml/processing/output")
    constraints = _load_json(env["baseline_constraints"]) if env.get("baseline_constraints") else None
    statistics = _load_json(env["baseline_statistics"]) if env.get("baseline_statistics") else None
    if not source.exists():
        raise AnalyzerError(f"dataset_source {source} does not exist")
    if "csv" in fmt:
        names, rows = read_csv(source, bool((fmt.get("csv") or {}).get("header")))
    elif "sagemakerCaptureJson" in fmt:
        expected = (constraints or statistics or {}).get("features")
        rows = read_capture(
            source,
            _time(env.get("start_time")),
            _time(env.get("end_time")),
            len(expected) if expected else None,
        )
        names = None
    else:
        raise AnalyzerError(f"dataset_format {sorted(fmt)} is not supported here: use csv (or captured data)")
    if not rows:
        raise AnalyzerError("Job inputs had no data")
    if names is None and (constraints or statistics):
        # captured rows have no header: they take the baseline's feature names by position
        baseline_names = [f["name"] for f in (constraints or statistics or {}).get("features") or []]
        names = baseline_names[: max(len(r) for r in rows)]
    columns = to_columns(names, rows)
    stats = dataset_statistics(columns, len(rows))
    output.mkdir(parents=True, exist_ok=True)
    (output / "statistics.json").write_text(json.dumps(stats, indent=2))
    if constraints is None:
        (output / "constraints.json").write_text(json.dumps(suggest_constraints(stats), indent=2))
        return "Completed: Job completed successfully with no violations."
    found = violations(columns, constraints, statistics)
    (output / "constraint_violations.json").write_text(json.dumps({"violations": found}, indent=2))
    if found:
        return f"CompletedWithViolations: Job completed successfully with {len(found)} violations."
    return "Completed: Job completed successfully with no violations."


def _write_message(text: str) -> None:
    path = Path(os.environ.get("SELFMAKER_ML_ROOT") or "/opt/ml") / "output" / "message"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError:
        log.warning("cannot write %s", path)


def main() -> int:
    """``python -m training.monitoring``: analyze, write the files and the job's message."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        message = analyze(os.environ)
    except AnalyzerError as exc:
        log.error("%s", exc)
        _write_message(str(exc))
        return 1
    log.info("%s", message)
    _write_message(message)
    return 0
