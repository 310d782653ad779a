"""Invocations answered together: ``DataPlane.invoke_many`` against one-by-one answers, and the inline
worker batching requests that arrive in the same poll (made deterministic by pausing the worker)."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
from serving_helpers import Server

from serving.dataplane import DataPlane, InvocationResult
from serving.settings import ServingSettings

CSV, JSON, NPY, JSONL = "text/csv", "application/json", "application/x-npy", "application/jsonlines"


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def parsed(body: bytes, content_type: str) -> Any:
    """An answer as numbers and strings, for comparisons that allow float rounding."""
    if content_type == NPY:
        return np.load(io.BytesIO(body), allow_pickle=False).tolist()
    if content_type == JSON:
        return json.loads(body)
    if content_type == JSONL:
        return [json.loads(line) for line in body.splitlines()]
    rows = []
    for line in body.decode().splitlines():
        row: list[Any] = []
        for field in line.split(","):
            try:
                row.append(float(field))
            except ValueError:
                row.append(field)
        rows.append(row)
    return rows


def assert_close(got: Any, want: Any) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys()
        for key in want:
            assert_close(got[key], want[key])
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (got, want)
        for g, w in zip(got, want, strict=True):
            assert_close(g, w)
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    else:
        assert got == want


def one_by_one(plane: DataPlane, requests_: list[tuple[bytes, str | None, str | None]]) -> list[Any]:
    answers: list[Any] = []
    for body, content_type, accept in requests_:
        try:
            answers.append(plane.invoke_full(body, content_type, accept))
        except Exception as exc:
            answers.append(exc)
    return answers


def assert_same_answers(plane: DataPlane, requests_: list[tuple[bytes, str | None, str | None]]) -> list[Any]:
    """``invoke_many`` answers each request as ``invoke_full`` does (errors: same type and message)."""
    together = plane.invoke_many(requests_)
    alone = one_by_one(plane, requests_)
    assert len(together) == len(requests_)
    for index, (got, want) in enumerate(zip(together, alone, strict=True)):
        if isinstance(want, Exception):
            assert type(got) is type(want) and str(got) == str(want), (index, got, want)
        else:
            assert isinstance(got, InvocationResult), (index, got)
            assert got.content_type == want.content_type
            assert_close(parsed(got.body, got.content_type), parsed(want.body, want.content_type))
    return together


def plane_for(model_dir: Path, **settings: Any) -> DataPlane:
    return DataPlane(model_dir, ServingSettings(workers=1, **settings)).load()


def test_mixed_requests_get_their_own_answers_and_errors(binary_model: Path) -> None:
    plane = plane_for(binary_model)
    rows = np.random.default_rng(5).normal(size=(6, 4)).astype(np.float32)
    line = [",".join(repr(float(v)) for v in row).encode() for row in rows]
    answers = assert_same_answers(
        plane,
        [
            (line[0], CSV, None),
            (line[1] + b"\n", CSV, CSV),  # same model run, another answer type
            (line[2], "text/csv; charset=utf-8", JSONL),
            (b"1.0,oops,3.0,4.0", CSV, None),  # bad number: its own 400
            (b"1.0,2.0", CSV, None),  # wrong field count: its own 400 (decoded apart from the others)
            (line[3] + b"\n" + line[4], CSV, None),  # two records in one request
            (json.dumps({"instances": rows[:3].tolist()}).encode(), JSON, NPY),
            (npy(rows[5:]), NPY, JSON),
            (line[5], CSV, "image/png"),  # 406 before any work
            (b"{}", "application/x-unknown", None),  # 415
            (b"", CSV, None),  # empty
            (line[0], None, None),  # no content type: CSV
        ],
    )
    assert [type(a).__name__ for a in answers[3:5]] == ["BadRequestError", "BadRequestError"]
    assert isinstance(answers[5], InvocationResult) and len(json.loads(answers[5].body)["predictions"]) == 2
    assert "expects 4 features, got 2" in str(answers[4])


@pytest.mark.parametrize("accept", [JSON, JSONL, CSV, NPY])
def test_multi_record_requests_split_back_in_order(binary_model: Path, accept: str) -> None:
    plane = plane_for(binary_model)
    rows = np.random.default_rng(9).normal(size=(9, 4)).astype(np.float32)
    text = [",".join(repr(float(v)) for v in row).encode() for row in rows]
    answers = assert_same_answers(
        plane,
        [
            (b"\n".join(text[0:2]), CSV, accept),
            (json.dumps({"instances": rows[2:5].tolist()}).encode(), JSON, accept),
            (npy(rows[5:6]), NPY, accept),
            (b"\n".join(text[6:9]) + b"\n", CSV, accept),
        ],
    )
    counts = [2, 3, 1, 3]
    for answer, count in zip(answers, counts, strict=True):
        got = parsed(answer.body, answer.content_type)
        assert len(got["predictions"] if accept == JSON else got) == count


def test_a_lone_bad_record_does_not_fail_the_records_stacked_with_it(binary_model: Path) -> None:
    plane = plane_for(binary_model)
    good = b"0.5,0.5,0.5,0.5"
    answers = assert_same_answers(plane, [(good, CSV, None), (b"0.1,0.2,,0.4", CSV, None), (good, CSV, None)])
    # an empty field is NaN for the default handler: answered, not refused
    assert all(isinstance(a, InvocationResult) for a in answers)
    answers = assert_same_answers(
        plane, [(good, CSV, None), (b"inf,nan,1e999,x", CSV, None), (good, CSV, None)]
    )
    assert isinstance(answers[1], Exception) and isinstance(answers[0], InvocationResult)


@pytest.mark.parametrize(
    "kind,signature",
    [
        ("multiclass", None),
        ("multiclass", {"response_format": "xgboost"}),
        ("binary", {"response_format": "linear-learner", "threshold": 0.3, "classes": ["no", "yes"]}),
        ("regression", None),
        ("regression", {"response_format": "xgboost"}),
    ],
)
def test_every_response_format_splits_per_request(
    model_factory: Callable[..., Path], kind: str, signature: dict[str, Any] | None
) -> None:
    plane = plane_for(model_factory(kind, signature))
    rows = np.random.default_rng(11).normal(size=(7, 4)).astype(np.float32)
    text = [",".join(repr(float(v)) for v in row).encode() for row in rows]
    assert_same_answers(
        plane,
        [(text[i], CSV, accept) for i, accept in enumerate([None, JSON, CSV, JSONL, NPY, None])]
        + [(text[6] + b"\n" + text[0], CSV, None)],
    )


@pytest.mark.parametrize(
    "kind,signature",
    [
        ("binary", None),
        ("multiclass", None),
        ("multiclass", {"response_format": "xgboost"}),
        ("binary", {"response_format": "linear-learner", "threshold": 0.3, "classes": ["no", "yes"]}),
        ("regression", None),
    ],
)
@pytest.mark.parametrize("accept", [None, JSON, CSV, JSONL, NPY])
def test_one_record_requests_with_the_same_headers_are_answered_as_alone(
    model_factory: Callable[..., Path], kind: str, signature: dict[str, Any] | None, accept: str | None
) -> None:
    """The usual batch under concurrent load (one CSV record per request, one Content-Type and
    Accept) is read as one table and run once; each answer must still be the request's own."""
    plane = plane_for(model_factory(kind, signature))
    rows = np.random.default_rng(13).normal(size=(5, 4)).astype(np.float32)
    text = [",".join(repr(float(v)) for v in row).encode() for row in rows]
    text[1] = b"-0," + text[1].split(b",", 1)[1] + b"\n"  # integer -0, a trailing line break
    answers = assert_same_answers(plane, [(line, "text/csv; charset=utf-8", accept) for line in text])
    assert all(isinstance(answer, InvocationResult) for answer in answers)
    # one bad record among them: its own 400, the others their answers
    answers = assert_same_answers(
        plane, [(line, CSV, accept) for line in text[:2]] + [(b"1,2,3", CSV, accept)]
    )
    assert [type(a).__name__ for a in answers] == ["InvocationResult", "InvocationResult", "BadRequestError"]
    if accept is not None:  # an Accept the model cannot answer: every request its own 406
        answers = assert_same_answers(plane, [(line, CSV, accept + "x") for line in text[:3]])
        assert [type(a).__name__ for a in answers] == ["NotAcceptableError"] * 3


def test_zipmap_outputs_split_per_request(tmp_path: Path) -> None:
    """skl2onnx's default export answers probabilities as a list of {class: p} per record."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    x = rng.normal(size=(90, 4)).astype(np.float32)
    y = np.array(["cat", "dog", "eel"])[np.digitize(x[:, 0], [-0.5, 0.5])]
    model = LogisticRegression(max_iter=500).fit(x, y)
    (tmp_path / "model.onnx").write_bytes(to_onnx(model, x[:1], target_opset=17).SerializeToString())
    plane = plane_for(tmp_path)
    answers = assert_same_answers(
        plane, [(b"-2.0,0,0,0", CSV, None), (b"2.0,0,0,0", CSV, None), (b"0,0,0,0", CSV, CSV)]
    )
    labels = [json.loads(a.body)["predictions"][0]["label"] for a in answers[:2]]
    assert labels == ["cat", "eel"]


def test_a_model_with_a_fixed_batch_dimension_runs_each_request_alone(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["input", "two"], ["doubled"])],
        "fixed",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("doubled", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor("two", TensorProto.FLOAT, [1], [2.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "model.onnx"))
    plane = plane_for(tmp_path)
    answers = assert_same_answers(
        plane,
        [(b"1,2,3", CSV, None), (b"4,5,6", CSV, CSV), (b"1,2,3\n4,5,6", CSV, None), (b"7,8,9", CSV, None)],
    )
    assert json.loads(answers[0].body) == {"predictions": [[2.0, 4.0, 6.0]]}
    assert answers[1].body == b"8.0,10.0,12.0\n"
    assert "expects 1 elements on axis 0" in str(answers[2])


def _two_input_model(path: Path, second_dim: str) -> None:
    """y = a * sum(b): ``b`` is per-record only when it shares ``a``'s batch dimension."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["b"], ["total"], keepdims=0),
            helper.make_node("Mul", ["a", "total"], ["y"]),
        ],
        "two",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 2]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [second_dim]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path / "model.onnx"))


def test_inputs_with_their_own_free_dimension_are_not_stacked(tmp_path: Path) -> None:
    _two_input_model(tmp_path / "own", "M")
    plane = plane_for(tmp_path / "own")
    first = json.dumps({"inputs": {"a": [[1.0, 1.0]], "b": [1.0, 2.0]}}).encode()
    second = json.dumps({"inputs": {"a": [[1.0, 2.0]], "b": [10.0]}}).encode()
    answers = assert_same_answers(plane, [(first, JSON, None), (second, JSON, None)])
    assert [json.loads(a.body)["predictions"] for a in answers] == [[[3.0, 3.0]], [[10.0, 20.0]]]


def test_inputs_sharing_a_named_batch_dimension_are_stacked(tmp_path: Path) -> None:
    _two_input_model(tmp_path / "shared", "N")
    plane = plane_for(tmp_path / "shared")
    assert plane.handler.model.stackable  # type: ignore[union-attr]
    first = json.dumps({"inputs": {"a": [[1.0, 1.0]], "b": [2.0]}}).encode()
    second = json.dumps({"inputs": {"a": [[1.0, 2.0]], "b": [10.0]}}).encode()
    answers = plane.invoke_many([(first, JSON, None), (second, JSON, None)])
    # one run: sum(b) is over both requests' records, as the graph declares b per record
    assert [json.loads(a.body)["predictions"] for a in answers] == [[[12.0, 12.0]], [[12.0, 24.0]]]


def test_user_hooks_run_one_request_at_a_time(binary_model: Path, tmp_path: Path) -> None:
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(binary_model, model_dir)
    (model_dir / "code").mkdir()
    (model_dir / "code" / "inference.py").write_text(
        "calls = []\n"
        "def predict_fn(data, model):\n"
        "    calls.append(len(data))\n"
        "    return {'seen': [len(calls)] * len(data)}\n"
        "def output_fn(prediction, accept):\n"
        "    import json\n"
        "    return json.dumps(prediction)\n"
    )
    plane = plane_for(model_dir)
    assert not plane.batchable
    answers = plane.invoke_many([(b"1,2,3,4", CSV, None), (b"1,2,3,4\n5,6,7,8", CSV, None)])
    assert [json.loads(a.body)["seen"] for a in answers] == [[1], [2, 2]]


# -- the inline worker ------------------------------------------------------------------------


def worker_pids(server: Server) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == server.proc.pid:
                pids.append(int(entry))
    return pids


@contextmanager
def paused(pid: int) -> Iterator[None]:
    """The worker stopped while the block sends: everything sent arrives before its next poll."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
        time.sleep(0.1)
    finally:
        os.kill(pid, signal.SIGCONT)


def request_bytes(body: bytes, content_type: str, accept: str | None = None) -> bytes:
    head = [
        "POST /invocations HTTP/1.1",
        "Host: 127.0.0.1",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
    ]
    if accept:
        head.append(f"Accept: {accept}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def read_response(sock: socket.socket) -> tuple[int, str, bytes]:
    buffer = b""
    deadline = time.monotonic() + 15
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            lines = buffer[:end].decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
            length = int(headers["content-length"])
            if len(buffer) >= end + 4 + length:
                return int(lines[0].split()[1]), headers["content-type"], buffer[end + 4 : end + 4 + length]
        assert time.monotonic() < deadline, "no complete response"
        chunk = sock.recv(65536)
        assert chunk, "connection closed"
        buffer += chunk


def batch_size_metric(server: Server) -> tuple[float, float]:
    text = requests.get(server.url + "/metrics", timeout=10).text
    count = re.search(r"^selfmaker_batch_size_count (\S+)$", text, re.M)
    total = re.search(r"^selfmaker_batch_size_sum (\S+)$", text, re.M)
    assert count and total, text
    return float(count.group(1)), float(total.group(1))


MIXED = [
    (b"0.5,-1.0,0.25,2.0", CSV, None),
    (b"-0.5,1.0,0.25,2.0", CSV, CSV),
    (b"1.0,x,0.25,2.0", CSV, None),  # 400, alone
    (b"2.0,2.0", CSV, None),  # 400, alone
    (json.dumps({"instances": [[0.1, 0.2, 0.3, 0.4], [1, 2, 3, 4]]}).encode(), JSON, JSONL),
    (b"0.0,0.0,0.0,0.0\n3.0,3.0,3.0,3.0\n", CSV, None),
    (b"0.5,0.5,0.5,0.5", CSV, "image/png"),  # 406
    (b"9.0,-9.0,0.0,1.0", CSV, None),
]


def send_together(server: Server, items: list[tuple[bytes, str, str | None]]) -> list[tuple[int, str, bytes]]:
    """Each request on its own kept-alive connection, all sent while the worker is paused."""
    parts = urlsplit(server.url)
    (pid,) = worker_pids(server)
    socks = [socket.create_connection((parts.hostname, parts.port), timeout=15) for _ in items]
    try:
        for sock in socks:  # connections accepted and idle in the worker's poller
            sock.sendall(b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert read_response(sock)[0] == 200
        with paused(pid):
            for sock, (body, content_type, accept) in zip(socks, items, strict=True):
                sock.sendall(request_bytes(body, content_type, accept))
        return [read_response(sock) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def one_at_a_time(server: Server, items: list[tuple[bytes, str, str | None]]) -> list[tuple[int, str, bytes]]:
    answers = []
    for body, content_type, accept in items:
        headers = {"Content-Type": content_type}
        if accept:
            headers["Accept"] = accept
        answer = requests.post(server.url + "/invocations", data=body, headers=headers, timeout=10)
        answers.append((answer.status_code, answer.headers["Content-Type"], answer.content))
    return answers


def assert_same_http_answers(got: list[tuple[int, str, bytes]], want: list[tuple[int, str, bytes]]) -> None:
    for (status, ctype, body), (want_status, want_ctype, want_body) in zip(got, want, strict=True):
        assert (status, ctype) == (want_status, want_ctype), (body, want_body)
        if status == 200:
            assert_close(parsed(body, ctype), parsed(want_body, want_ctype))
        else:
            assert json.loads(body) == json.loads(want_body)


def test_requests_arriving_together_are_answered_together(
    serve: Callable[..., Server], binary_model: Path
) -> None:
    server = serve("--model-dir", str(binary_model), workers=1)
    before = batch_size_metric(server)
    together = send_together(server, MIXED)
    after = batch_size_metric(server)
    assert after[0] - before[0] == 1 and after[1] - before[1] == len(MIXED), (before, after)
    assert [status for status, _, _ in together] == [200, 200, 400, 400, 200, 200, 406, 200]
    assert_same_http_answers(together, one_at_a_time(server, MIXED))
    # the worker keeps serving: lone requests are batches of one
    assert batch_size_metric(server)[1] - after[1] == len(MIXED) - 0  # one_at_a_time: 8 batches of 1
    assert server.alive()


def test_batching_can_be_turned_off(serve: Callable[..., Server], binary_model: Path) -> None:
    server = serve("--model-dir", str(binary_model), workers=1, env={"SELFMAKER_SERVE_BATCHING": "false"})
    together = send_together(server, MIXED)
    assert batch_size_metric(server) == (0.0, 0.0)
    assert_same_http_answers(together, one_at_a_time(server, MIXED))
