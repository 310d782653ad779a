"""The real model server: gunicorn on 127.0.0.1 started as ``python -m serving``, readiness by polling."""

from __future__ import annotations

import email.utils
import io
import json
import re
import shutil
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import boto3
import numpy as np
import pytest
import requests
from serving_helpers import Server, tar_dir, wait_for_log

ROW = b"2.0,1.0,0.0,0.0\n"


@pytest.fixture(scope="module")
def server(serve: Callable[..., Server], binary_model: Path) -> Server:
    """Two workers on the binary classifier (most tests share it)."""
    return serve("--model-dir", str(binary_model), workers=2)


def post(
    server: Server, body: bytes, content_type: str | None = "text/csv", **headers: str
) -> requests.Response:
    all_headers = dict(headers)
    if content_type is not None:
        all_headers["Content-Type"] = content_type
    return requests.post(server.url + "/invocations", data=body, headers=all_headers, timeout=10)


def metric(text: str, name: str, **labels: str) -> float:
    label_text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name) + (r"\{" + re.escape(label_text) + r"\}" if labels else "") + r" ([0-9.e+-]+)"
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


def test_ping_and_content_types(server: Server) -> None:
    ping = requests.get(server.url + "/ping", timeout=5)
    assert ping.status_code == 200
    # the Date header is formatted once per second (serving.http.response.SecondDate): still the time
    assert abs(email.utils.parsedate_to_datetime(ping.headers["Date"]).timestamp() - time.time()) < 5
    json_answer = post(server, ROW)
    assert json_answer.status_code == 200 and json_answer.headers["Content-Type"] == "application/json"
    expected = json_answer.json()["predictions"]
    assert (
        post(server, b'{"instances": [[2, 1, 0, 0]]}', "application/json").json()["predictions"] == expected
    )
    assert post(server, b"[2, 1, 0, 0]\n", "application/jsonlines").json()["predictions"] == expected
    buffer = io.BytesIO()
    np.save(buffer, np.array([[2, 1, 0, 0]], dtype=np.float32))
    assert post(server, buffer.getvalue(), "application/x-npy").json()["predictions"] == expected
    csv_answer = post(server, ROW, Accept="text/csv")
    assert csv_answer.headers["Content-Type"] == "text/csv"
    assert csv_answer.text.split(",")[0] == str(expected[0]["label"])
    npy_answer = post(server, ROW, Accept="application/x-npy")
    np.testing.assert_allclose(
        np.load(io.BytesIO(npy_answer.content))[0], expected[0]["probabilities"], rtol=1e-6
    )
    lines = post(server, ROW + ROW, Accept="application/jsonlines").text.splitlines()
    assert [json.loads(line) for line in lines] == expected * 2


@pytest.mark.parametrize(
    ("body", "content_type", "headers", "status", "message"),
    [
        (b"1,2,3\n", "text/csv", {}, 400, "expects 4 features, got 3"),
        (b"1,2,x,4\n", "text/csv", {}, 400, "is not a number"),
        (b"{oops", "application/json", {}, 400, "malformed JSON"),
        (b'{"inputs": {"nope": [[1,2,3,4]]}}', "application/json", {}, 400, "unknown input(s) 'nope'"),
        (b"garbage", "application/x-npy", {}, 400, "malformed NPY"),
        (ROW, "image/png", {}, 415, "unsupported Content-Type 'image/png'"),
        (ROW, "text/csv", {"Accept": "image/png"}, 406, "cannot answer Accept 'image/png'"),
        (b"", "text/csv", {}, 400, "empty CSV body"),
    ],
)
def test_bad_input_gets_its_4xx_and_server_keeps_serving(
    server: Server, body: bytes, content_type: str, headers: dict[str, str], status: int, message: str
) -> None:
    answer = post(server, body, content_type, **headers)
    assert answer.status_code == status
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json() == {"error": answer.json()["error"], "status": status}
    assert message in answer.json()["error"]
    assert post(server, ROW).status_code == 200
    assert requests.get(server.url + "/ping", timeout=5).status_code == 200


def test_payload_limit_and_unknown_routes(serve: Callable[..., Server], binary_model: Path) -> None:
    small = serve(  # also exercises the sync worker class
        "--model-dir",
        str(binary_model),
        env={"SAGEMAKER_MAX_PAYLOAD_IN_MB": "1", "SELFMAKER_SERVE_WORKER_CLASS": "sync"},
    )
    big = ROW * (1024 * 1024 // len(ROW) + 10)
    answer = post(small, big)
    assert answer.status_code == 413 and "exceeds the 1 MB limit" in answer.json()["error"]
    assert post(small, ROW * 1000).status_code == 200  # just under the limit is fine
    params = requests.get(small.url + "/execution-parameters", timeout=5).json()
    assert params == {"MaxConcurrentTransforms": 1, "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": 1}
    missing = requests.get(small.url + "/nope", timeout=5)
    assert missing.status_code == 404 and missing.json()["status"] == 404
    wrong_method = requests.get(small.url + "/invocations", timeout=5)
    assert wrong_method.status_code == 405 and wrong_method.headers["Content-Type"] == "application/json"
    assert wrong_method.headers["Allow"] == "POST" and wrong_method.json()["status"] == 405
    post_ping = requests.post(small.url + "/ping", data=b"x", timeout=5)
    assert post_ping.status_code == 405 and post_ping.headers["Allow"] == "GET, HEAD"
    head = requests.head(small.url + "/ping", timeout=5)
    assert head.status_code == 200 and head.content == b""
    assert requests.get(small.url + "/ping", timeout=5).status_code == 200
    assert "Using worker: sync" in small.log()


def test_metrics_count_requests_across_workers(server: Server) -> None:
    before = requests.get(server.url + "/metrics", timeout=5).text
    for _ in range(6):
        assert post(server, ROW).status_code == 200
    for _ in range(3):
        assert post(server, b"1,2\n").status_code == 400
    after = requests.get(server.url + "/metrics", timeout=5).text
    ok = metric(after, "selfmaker_requests_total", path="/invocations", status="200") - metric(
        before, "selfmaker_requests_total", path="/invocations", status="200"
    )
    bad = metric(after, "selfmaker_request_errors_total", status="400") - metric(
        before, "selfmaker_request_errors_total", status="400"
    )
    assert (ok, bad) == (6, 3)
    model_count = metric(after, "selfmaker_model_latency_seconds_count") - metric(
        before, "selfmaker_model_latency_seconds_count"
    )
    assert model_count == 6
    assert metric(after, "selfmaker_overhead_latency_seconds_count") >= 6
    pids = set(re.findall(r'"pid":\s*(\d+)[^\n]*"POST /invocations 200"', server.log()))
    assert len(pids) == 2, "both workers served requests, and /metrics summed them"


def test_access_log_line_per_request(server: Server) -> None:
    post(server, ROW, **{"X-Amzn-RequestId": "req-123"})
    text = wait_for_log(server, "req-123")
    line = next(json.loads(line) for line in text.splitlines() if "req-123" in line)
    assert line["status"] == 200 and line["latency_ms"] > 0 and line["model_ms"] >= 0
    assert line["msg"] == "POST /invocations 200"


HOOKS = """
    import json

    def model_fn(model_dir, context):
        return {"offset": 1.5}

    def input_fn(input_data, content_type, context):
        return json.loads(input_data)

    def predict_fn(data, model):
        if data.get("explode"):
            raise RuntimeError("secret detail " + "x" * 3)
        return {"value": data["x"] + model["offset"]}

    def output_fn(prediction, accept, context):
        attrs = context.get_request_header(0, "X-Amzn-SageMaker-Custom-Attributes")
        context.set_response_header(0, "X-Amzn-SageMaker-Custom-Attributes", f"got={attrs}\\r\\nInjected: 1")
        return json.dumps(prediction), accept
"""


def test_hooks_custom_attributes_and_generic_500(
    serve: Callable[..., Server], binary_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    model = tmp_path_factory.mktemp("hooks") / "model"
    shutil.copytree(binary_model, model)
    (model / "code").mkdir()
    (model / "code" / "inference.py").write_text(textwrap.dedent(HOOKS))
    (model / "code" / "requirements.txt").write_text(
        "numpy\n"
    )  # already satisfied: pip runs, installs nothing
    server = serve("--model-dir", str(model), workers=2)
    answer = post(
        server,
        b'{"x": 1}',
        "application/json",
        Accept="application/json",
        **{"X-Amzn-SageMaker-Custom-Attributes": "trace=7"},
    )
    assert answer.status_code == 200 and answer.json() == {"value": 2.5}
    assert answer.headers["X-Amzn-SageMaker-Custom-Attributes"] == "got=trace=7  Injected: 1"
    assert "Injected" not in answer.headers
    failed = post(server, b'{"explode": true}', "application/json")
    assert failed.status_code == 500
    assert failed.json() == {"error": "internal error", "status": 500}
    text = wait_for_log(server, "secret detail xxx")
    assert "Traceback" in text and "predict_fn" in text
    assert text.count("installing ") == 1, "code/requirements.txt is installed once, not per worker"
    assert post(server, b'{"x": 2}', "application/json").json() == {"value": 3.5}


def test_sklearn_default_export_with_zipmap_is_served(
    serve: Callable[..., Server], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """skl2onnx's default classifier export (``output_label`` + a ZipMap ``output_probability``: one
    {class: probability} per record) answers labels and probabilities in the graph's class order."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    x = rng.normal(size=(90, 4)).astype(np.float32)
    y = np.array(["cat", "dog", "eel"])[np.digitize(x[:, 0], [-0.5, 0.5])]
    model = LogisticRegression(max_iter=500).fit(x, y)
    model_dir = tmp_path_factory.mktemp("zipmap")
    (model_dir / "model.onnx").write_bytes(to_onnx(model, x[:1], target_opset=17).SerializeToString())
    server = serve("--model-dir", str(model_dir))
    rows = np.array([[-2.0, 0, 0, 0], [2.0, 0, 0, 0]], dtype=np.float32)
    answer = post(server, b"-2.0,0,0,0\n2.0,0,0,0\n", Accept="application/json")
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert [p["label"] for p in predictions] == ["cat", "eel"]
    expected = model.predict_proba(rows)
    assert np.allclose([p["probabilities"] for p in predictions], expected, atol=1e-5)
    csv = post(server, b"2.0,0,0,0\n", Accept="text/csv")
    assert csv.status_code == 200 and csv.text.startswith("eel,")


def test_model_that_fails_to_load_answers_503_and_stays_up(
    serve: Callable[..., Server], tmp_path_factory: pytest.TempPathFactory
) -> None:
    model = tmp_path_factory.mktemp("broken")
    (model / "model.onnx").write_bytes(b"definitely not onnx")
    server = serve("--model-dir", str(model), expect=503)
    text = wait_for_log(server, "model failed to load")
    assert "onnxruntime cannot load model.onnx" in text
    ping = requests.get(server.url + "/ping", timeout=5)
    assert ping.status_code == 503 and "model failed to load" in ping.json()["error"]
    invoke = post(server, ROW)
    assert invoke.status_code == 503
    assert server.alive()
    assert text.count("Booting worker") == 1, "no crash loop: the worker was not restarted"


def test_unsafe_archive_is_refused_at_load(
    serve: Callable[..., Server], tmp_path_factory: pytest.TempPathFactory, binary_model: Path
) -> None:
    import tarfile

    from serving_helpers import add_member

    archive = tmp_path_factory.mktemp("evil") / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(binary_model / "model.onnx", arcname="model.onnx")
        add_member(tar, "../escape.py", data=b"print('pwned')")
    server = serve("--model-data", str(archive), expect=503)
    text = wait_for_log(server, "model failed to load")
    assert "'../escape.py' contains '..'" in text
    assert not (archive.parent.parent / "escape.py").exists()


def test_s3_model_data_through_moto(
    serve: Callable[..., Server],
    binary_model: Path,
    moto_server: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    s3 = boto3.client("s3", endpoint_url=moto_server)
    s3.create_bucket(Bucket="serving-models")
    archive = tar_dir(binary_model, tmp_path_factory.mktemp("s3src") / "model.tar.gz")
    s3.upload_file(str(archive), "serving-models", "m/model.tar.gz")
    server = serve(
        "--model-data",
        "s3://serving-models/m/model.tar.gz",
        env={"AWS_ENDPOINT_URL_S3": moto_server},
        workers=2,
    )
    direct = serve("--model-dir", str(binary_model))
    with requests.Session() as session:  # keep-alive connections on the (default) inline workers
        for _ in range(5):
            answer = session.post(
                server.url + "/invocations", data=ROW, headers={"Content-Type": "text/csv"}, timeout=10
            )
            assert answer.json() == post(direct, ROW).json()
    assert "Using worker: serving.http.worker.InlineWorker" in server.log()


def test_server_stops_when_its_supervisor_is_killed(binary_model: Path, tmp_path: Path) -> None:
    """With SELFMAKER_PARENT_PID set, a SIGKILLed supervisor leaves no model server behind."""
    import os
    import signal
    import subprocess
    import sys

    import psutil
    from testkit import find_free_port, wait_http

    port = find_free_port()
    supervisor_code = (
        "import os, subprocess, sys, time\n"
        "env = dict(os.environ, SELFMAKER_PARENT_PID=str(os.getpid()), SAGEMAKER_MODEL_SERVER_WORKERS='1')\n"
        f"p = subprocess.Popen([sys.executable, '-m', 'serving', '--model-dir', {str(binary_model)!r},"
        f" '--host', '127.0.0.1', '--port', '{port}'], env=env, start_new_session=True,"
        f" stdout=open({str(tmp_path / 'server.log')!r}, 'ab'), stderr=subprocess.STDOUT)\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    supervisor = subprocess.Popen([sys.executable, "-c", supervisor_code], stdout=subprocess.PIPE)
    server_pid = None
    try:
        assert supervisor.stdout is not None
        server_pid = int(supervisor.stdout.readline())
        wait_http(f"http://127.0.0.1:{port}/ping", timeout=60, alive=lambda: psutil.pid_exists(server_pid))
        server = psutil.Process(server_pid)
        supervisor.kill()
        supervisor.wait(10)
        gone, alive = psutil.wait_procs([server], timeout=30)
        assert gone and not alive, "the model server outlived its supervisor"
        assert "went away" in (tmp_path / "server.log").read_text()
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait(10)
        if supervisor.stdout is not None:
            supervisor.stdout.close()
        if server_pid is not None and psutil.pid_exists(server_pid):
            os.killpg(server_pid, signal.SIGKILL)
