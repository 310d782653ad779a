"""EnableNetworkIsolation: a script-mode job's script has no network, and its code comes from the ``code``
channel the SageMaker SDK passes instead of ``sagemaker_submit_directory``'s S3 location."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from training_helpers import SELFMAKER_IMAGE, channel, extract_model, request, run_job, tar_gz

from common.proc import network_namespace_command

PROBE = """
import json, os, socket, sys
port = int(os.environ["PROBE_PORT"])
try:
    socket.create_connection(("127.0.0.1", port), timeout=5).close()
    outcome = "connected"
except OSError as exc:
    outcome = f"refused: {exc}"
with open(os.path.join(os.environ["SM_MODEL_DIR"], "probe.json"), "w") as f:
    json.dump({"outcome": outcome}, f)
print("probe:", outcome)
"""


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP server on the host's 127.0.0.1 that accepts (and closes) connections; yields its port."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                conn.close()
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        server.close()


def _job(tmp_path: Path, name: str, port: int, isolated: bool) -> dict[str, object]:
    code = tmp_path / "code"
    code.mkdir()
    (code / "sourcedir.tar.gz").write_bytes(tar_gz({"probe.py": PROBE}))
    data = tmp_path / "data"
    data.mkdir()
    (data / "d.csv").write_text("1,2\n")
    req = request(
        name,
        SELFMAKER_IMAGE,
        # what the SDK sends under network isolation: the code is a channel, the submit dir its local path
        {
            "sagemaker_program": "probe.py",
            "sagemaker_submit_directory": "/opt/ml/input/data/code/sourcedir.tar.gz",
        },
        [channel("train", data.as_uri()), channel("code", code.as_uri())],
        (tmp_path / "out").as_uri(),
    )
    req["EnableNetworkIsolation"] = isolated
    req["Environment"] = {"PROBE_PORT": str(port)}
    return req


@pytest.mark.parametrize("isolated", [False, True])
def test_an_isolated_script_cannot_open_a_connection(tmp_path: Path, listener: int, isolated: bool) -> None:
    if isolated and not network_namespace_command():
        pytest.fail("this machine gives no network namespace (unshare --net): the isolation cannot be tested")
    state, lines = run_job(_job(tmp_path, f"iso-{isolated}".lower(), listener, isolated), tmp_path / "job")
    assert state.status == "Completed", (state.failure_reason, lines[-20:])
    model = extract_model(Path(state.model_artifacts[len("file://") :]), tmp_path / "model")
    outcome = json.loads((model / "probe.json").read_text())["outcome"]
    if isolated:  # the same connection the control job makes is refused: no network at all
        assert outcome.startswith("refused"), outcome
        assert any("network namespace of its own" in line for line in lines)
    else:
        assert outcome == "connected"
