"""Floods and slow clients against `selfmaker up` (issue #26, "Robustness, measured" 4): idle and slowloris
connections do not stop a well-behaved client; beyond SELFMAKER_ENDPOINT_QUEUE_LIMIT requests in flight an
endpoint answers ThrottlingException at once. (The model server's side: tests/serving/test_inline_worker.py;
the p99 ratio and RSS figures: bench/slowclients.py.)"""

from __future__ import annotations

import http.client
import io
import json
import tarfile
import threading
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from platform_helpers import ROW, deploy, make_model, running, variant

from bench.slowclients import Attack, well_behaved_calls

SLOW_MODEL = """
import time

def model_fn(model_dir):
    return "slow"

def predict_fn(data, model):
    time.sleep(0.05)  # every request holds the model server a moment, so a flood queues in the router
    return [1]
"""


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def test_idle_and_slowloris_clients_do_not_stop_invocations(
    sm: Any, platform_server: Any, onnx_model_tar: str
) -> None:
    model, endpoint = f"m-{uuid.uuid4().hex[:8]}", f"flood-{uuid.uuid4().hex[:8]}"
    make_model(sm, model, onnx_model_tar)
    deploy(sm, endpoint, [variant("AllTraffic", model)])
    host, port = _host_port(platform_server.url)
    path = f"/endpoints/{endpoint}/invocations"
    with Attack(host, port, path, idle=500, slow=50, interval=0.5, max_seconds=120):
        result = well_behaved_calls(host, port, path, 200, timeout=20)
    assert result["ok"] == 200, result["statuses"][-5:]
    sm.delete_endpoint(EndpointName=endpoint)


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A `selfmaker up` whose endpoints take at most 4 requests in flight."""
    with running(tmp_path_factory.mktemp("limited-home"), {"SELFMAKER_ENDPOINT_QUEUE_LIMIT": "4"}) as server:
        yield server


def _slow_model(dest: Path) -> str:
    archive = dest / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = SLOW_MODEL.encode()
        info = tarfile.TarInfo("code/inference.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return archive.as_uri()


def test_a_flood_beyond_the_queue_limit_gets_throttling_exception(limited: Any, tmp_path: Path) -> None:
    sm = limited.sagemaker()
    make_model(sm, "slow", _slow_model(tmp_path))
    deploy(sm, "slow", [variant("AllTraffic", "slow")])
    host, port = _host_port(limited.url)
    answers: list[tuple[int, dict[str, str], bytes]] = []
    lock = threading.Lock()

    def flood() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        try:
            for _ in range(4):
                conn.request(
                    "POST", "/endpoints/slow/invocations", body=ROW, headers={"Content-Type": "text/csv"}
                )
                resp = conn.getresponse()
                body = resp.read()
                with lock:
                    answers.append((resp.status, {k.lower(): v for k, v in resp.getheaders()}, body))
        finally:
            conn.close()

    threads = [threading.Thread(target=flood) for _ in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    statuses = [status for status, _, _ in answers]
    assert len(answers) == 96
    assert set(statuses) == {200, 429}, statuses
    for status, headers, body in answers:
        if status == 429:
            assert headers["x-amzn-errortype"] == "ThrottlingException"
            error = json.loads(body)
            assert error["__type"] == "ThrottlingException"
            assert "SELFMAKER_ENDPOINT_QUEUE_LIMIT" in error["message"]
    # the flood over, the endpoint answers as before
    result = well_behaved_calls(host, port, "/endpoints/slow/invocations", 5)
    assert result["ok"] == 5
