"""Batch transform of RecordIO-protobuf input (``SplitType=RecordIO``, what ``record_set()`` uploads), single
and multi-record, answered as JSON Lines and as RecordIO-protobuf: every record's score is the model's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from batch_helpers import N_FEATURES, build_lr_model, predict, request

from common import recordio


@pytest.fixture(scope="module")
def ll_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lr_model(tmp_path_factory.mktemp("ll") / "model", response_format="linear-learner")


@pytest.mark.parametrize("strategy", ["SingleRecord", "MultiRecord"])
@pytest.mark.parametrize("accept", ["application/jsonlines", "application/x-recordio-protobuf"])
def test_recordio_input_scores_equal_the_models(
    run_job: Any, ll_model: Path, tmp_path: Path, strategy: str, accept: str
) -> None:
    rows = np.random.default_rng(4).normal(size=(57, N_FEATURES)).astype(np.float32)
    src = tmp_path / "in" / "x.rec"
    src.parent.mkdir(parents=True)
    src.write_bytes(recordio.encode_dense(rows, np.zeros(len(rows), dtype=np.float32)))  # labels ignored
    req = request(
        (tmp_path / "in").as_uri(),
        (tmp_path / "out").as_uri(),
        ContentType="application/x-recordio-protobuf",
        SplitType="RecordIO",
        BatchStrategy=strategy,
        MaxPayloadInMB=1,
        AssembleWith="Line" if accept == "application/jsonlines" else "None",
        Accept=accept,
    )
    result = run_job(req, ll_model)
    assert result.status == "Completed", result.failure_reason
    out = (tmp_path / "out" / "x.rec.out").read_bytes()
    if accept == "application/jsonlines":
        answers = [orjson.loads(line) for line in out.splitlines()]
        scores = [a["score"] for a in answers]
        labels = [a["predicted_label"] for a in answers]
    else:
        records = [recordio.parse_record(p) for p in recordio.split_records(out)]
        scores = [r.label["score"].float32_tensor.values[0] for r in records]
        labels = [int(r.label["predicted_label"].float32_tensor.values[0]) for r in records]
    expected = predict(ll_model, rows)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    assert labels == [int(p >= 0.5) for p in expected]
