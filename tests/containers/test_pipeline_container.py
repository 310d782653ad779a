"""An inference pipeline mixing executors: a selfmaker script-mode container (a local process) feeds the
tiny BYOC image (a container), each with its own /opt/ml/model; the BYOC server takes text/csv only, so the
answer proves the first container's Content-Type reached it."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from containers_helpers import load_platform_helpers

pytestmark = pytest.mark.timeout(900)

SCALER = """
def transform_fn(model, data, content_type, accept):
    rows = [[float(v) for v in line.split(",")] for line in data.strip().splitlines()]
    body = "\\n".join(",".join(repr((v - 1.0) / 2.0) for v in row) for row in rows) + "\\n"
    return body, "text/csv"


def model_fn(model_dir):
    return None
"""


def _tar(path: Path, files: dict[str, bytes]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path.as_uri()


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, engine: str) -> Iterator[Any]:
    helpers = load_platform_helpers()
    server = helpers.PlatformProcess(
        tmp_path_factory.mktemp("home"), env={"SELFMAKER_CONTAINER_ENGINE": engine}
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_pipeline_of_a_process_and_a_container(platform: Any, byoc_image: str, tmp_path: Path) -> None:
    helpers = load_platform_helpers()
    sm, smr = platform.sagemaker(), platform.runtime()
    weights, bias = [2.0, -1.0], 0.5
    sm.create_model(
        ModelName="mixed-pipe",
        Containers=[
            {
                "Image": "selfmaker",
                "ModelDataUrl": _tar(tmp_path / "scaler.tar.gz", {"code/inference.py": SCALER.encode()}),
            },
            {
                "Image": byoc_image,
                "ModelDataUrl": _tar(
                    tmp_path / "linear.tar.gz",
                    {"model.json": json.dumps({"weights": weights, "bias": bias}).encode()},
                ),
            },
        ],
        ExecutionRoleArn="arn:aws:iam::123456789012:role/selfmaker",
    )
    helpers.deploy(sm, "mixed-pipe", [helpers.variant("AllTraffic", "mixed-pipe")])
    try:
        rows = [[1.0, 2.0], [5.0, -3.0]]
        answer = smr.invoke_endpoint(
            EndpointName="mixed-pipe",
            Body="".join(f"{a},{b}\n" for a, b in rows).encode(),
            ContentType="text/csv",
        )
        expected = [
            sum(w * (v - 1.0) / 2.0 for w, v in zip(weights, row, strict=True)) + bias for row in rows
        ]
        assert [float(v) for v in answer["Body"].read().decode().split()] == pytest.approx(expected)
    finally:
        sm.delete_endpoint(EndpointName="mixed-pipe")
