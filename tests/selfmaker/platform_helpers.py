"""Helpers of the platform tests: a real `selfmaker up` subprocess, boto3 clients, tiny models, deploys.

Imported by tests/selfmaker/conftest.py and tests/acceptance/conftest.py (by path; tests/ is no package).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
from botocore.config import Config
from testkit import find_free_port, wait_http  # noqa: F401 - the platform tests use them as helpers.*

ROOT = Path(__file__).resolve().parents[2]


class PlatformProcess:
    """`python -m selfmaker up` on 127.0.0.1 with its own home, started and stopped by PID."""

    def __init__(
        self,
        home: Path,
        port: int | None = None,
        env: dict[str, str] | None = None,
        *,
        args: list[str] | None = None,
        key: tuple[str, str] | None = None,
        tls_ca: Path | None = None,
    ) -> None:
        self.home = home
        self.port = port or find_free_port()
        #: with ``tls_ca`` (the CA of the ``--tls-cert`` passed in ``args``) the platform serves HTTPS
        self.tls_ca = tls_ca
        self.url = f"{'https' if tls_ca else 'http'}://127.0.0.1:{self.port}"
        self.env = env or {}
        #: more `selfmaker up` flags, and the access key (id, secret) the clients sign with
        self.args = list(args or [])
        self.key = key
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = home / "up.out"

    def start(self, timeout: float = 30.0) -> PlatformProcess:
        # owner-only, as `selfmaker up` makes a home (it leaves an existing one as it is, with a warning)
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        env = {
            **os.environ,
            "SELFMAKER_STARTUP_TIMEOUT": "20",
            "SELFMAKER_DRAIN_TIMEOUT": "30",
            "SELFMAKER_STOP_GRACE": "5",
            "SELFMAKER_TRAINING_STOP_GRACE": "10",
            **self.env,
        }
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "selfmaker",
                    "up",
                    "--home",
                    str(self.home),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    *self.args,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=str(ROOT),
                env=env,
                start_new_session=True,
            )
        wait_http(
            self.url + "/ping",
            timeout=timeout,
            alive=lambda: self.proc is not None and self.proc.poll() is None,
            verify=str(self.tls_ca) if self.tls_ca else True,
        )
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Stop the platform (graceful by default) and make sure its process group is gone."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        try:  # model servers are in their own sessions; a SIGKILLed platform leaves them: reap by group
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def sagemaker(self) -> Any:
        return client("sagemaker", self.url, key=self.key, verify=self.tls_ca)

    def runtime(self) -> Any:
        return client("sagemaker-runtime", self.url, key=self.key, verify=self.tls_ca)


def client(service: str, url: str, *, key: tuple[str, str] | None = None, verify: Path | None = None) -> Any:
    """A plain boto3 client pointed at the platform (signing with ``key``, or with a dummy key that a
    platform without keys does not check)."""
    key_id, secret = key or ("testing", "testing")
    return boto3.client(
        service,
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        verify=str(verify) if verify else None,
        config=Config(
            retries={"mode": "standard", "max_attempts": 1}, max_pool_connections=32, read_timeout=60
        ),
    )


def build_classifier_tar(dest: Path, *, features: int = 4, seed: int = 0) -> Path:
    """A logistic-regression ``model.tar.gz`` (model.onnx + signature.json) under ``dest``."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, features)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    model = LogisticRegression().fit(x, y)
    onx = to_onnx(model, x[:1], options={id(model): {"zipmap": False}}, target_opset=17)
    signature = {
        "format": 1,
        "framework": "sklearn",
        "task": "binary_classification",
        "inputs": [{"name": onx.graph.input[0].name, "dtype": "float32", "shape": [None, features]}],
        "classes": [0, 1],
    }
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in (
            ("model.onnx", onx.SerializeToString()),
            ("signature.json", json.dumps(signature).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


def build_broken_tar(dest: Path) -> Path:
    """A ``model.tar.gz`` whose model.onnx is garbage: the model server cannot load it."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / "broken.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b"this is not an onnx model"
        info = tarfile.TarInfo("model.onnx")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return archive


WAIT = {"Delay": 0.25, "MaxAttempts": 400}


def make_model(sm: Any, name: str, model_data: str) -> None:
    sm.create_model(
        ModelName=name,
        PrimaryContainer={"Image": "selfmaker", "ModelDataUrl": model_data},
        ExecutionRoleArn="arn:aws:iam::123456789012:role/selfmaker",
    )


@contextlib.contextmanager
def running(home: Path, env: dict[str, str] | None = None, **options: Any) -> Iterator[PlatformProcess]:
    """A started `selfmaker up` with its own ``home``, stopped (with its process group) on exit
    (``options``: :class:`PlatformProcess`'s ``args``, ``key``, ``tls_ca``)."""
    server = PlatformProcess(home, env=env, **options).start()
    try:
        yield server
    finally:
        server.stop()


def create_key(home: Path, name: str = "", *allow: str) -> tuple[str, str]:
    """A new access key of the platform at ``home``, made by `selfmaker keys create` (id, secret)."""
    args = [sys.executable, "-m", "selfmaker", "keys", "--home", str(home), "create", "--json"]
    args += ["--name", name] if name else []
    for action in allow:
        args += ["--allow", action]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True, cwd=str(ROOT))
    created = json.loads(proc.stdout)
    return created["KeyId"], created["SecretAccessKey"]


def moto_env(moto_server: str, **settings: str) -> dict[str, str]:
    """Environment of a `selfmaker up` whose AWS calls (S3, SNS, SQS) go to the moto server, plus
    ``settings``."""
    return {
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        **settings,
    }


def variant(name: str, model: str, weight: float = 1.0, count: int = 1) -> dict[str, Any]:
    return {
        "VariantName": name,
        "ModelName": model,
        "InstanceType": "ml.m5.large",
        "InitialInstanceCount": count,
        "InitialVariantWeight": weight,
    }


def deploy(sm: Any, name: str, variants: list[dict[str, Any]], *, wait: bool = True) -> None:
    """Endpoint config ``name``-cfg and endpoint ``name``; waits for InService with boto3's waiter."""
    sm.create_endpoint_config(EndpointConfigName=f"{name}-cfg", ProductionVariants=variants)
    sm.create_endpoint(EndpointName=name, EndpointConfigName=f"{name}-cfg")
    if wait:
        sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)


class LoadLoop:
    """Concurrent invocations in background threads, bounded in count and time; records every outcome."""

    def __init__(
        self,
        invoke: Callable[[], str],
        *,
        threads: int = 4,
        max_calls: int = 20_000,
        max_seconds: float = 120.0,
    ) -> None:
        import threading

        self.invoke = invoke
        self.threads = threads
        self.max_calls = max_calls
        self.max_seconds = max_seconds
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.variants: list[str] = []
        self.errors: list[str] = []
        self._workers = [threading.Thread(target=self._work, daemon=True) for _ in range(threads)]

    def _work(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            with self.lock:
                if len(self.variants) + len(self.errors) >= self.max_calls:
                    return
            try:
                outcome = self.invoke()
            except Exception as exc:  # noqa: BLE001 - every failure is recorded and asserted on
                with self.lock:
                    self.errors.append(repr(exc))
            else:
                with self.lock:
                    self.variants.append(outcome)

    def __enter__(self) -> LoadLoop:
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for worker in self._workers:
            worker.join(60)

    def count(self) -> int:
        with self.lock:
            return len(self.variants) + len(self.errors)

    def wait_for_calls(self, n: int, timeout: float = 60.0) -> None:
        """Block until at least ``n`` more calls finished (polling with a deadline)."""
        target = self.count() + n
        deadline = time.monotonic() + timeout
        while self.count() < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"load loop made no progress ({self.count()} < {target})")
            time.sleep(0.02)


ROW = b"0.5,1.0,-0.3,0.2"


def invoke_variant(smr: Any, endpoint: str, **kwargs: Any) -> str:
    """One InvokeEndpoint with a CSV row; returns the variant that answered (raises on any error)."""
    resp = smr.invoke_endpoint(EndpointName=endpoint, Body=ROW, ContentType="text/csv", **kwargs)
    resp["Body"].read()
    return resp["ResponseMetadata"]["HTTPHeaders"]["x-amzn-invoked-production-variant"]
