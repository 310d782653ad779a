"""The gateway's listener rules with real traffic: boto3 → the rules as recorded under mocks → real
model servers.

An Application Load Balancer is not available here, so a small router on 127.0.0.1 evaluates exactly the
recorded ``ListenerRule`` inputs the way ALB documents it (rules in priority order, every condition must
match — path pattern, method, header values case-insensitively — then a weighted pick among the forward
action's target groups, else the listener's default action). What is tested is ours: that the rules
match the requests boto3's ``sagemaker-runtime`` really sends (path, method, TargetVariant header), that the
weights give the configured split, that unknown endpoints get a JSON 404 boto3 can read, and that the
model servers behind them answer the runtime path with their own variant.
"""

from __future__ import annotations

import fnmatch
import http.client
import os
import random
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import numpy as np
import pytest
from botocore.config import Config

from infra.components.endpoints.gateway import Gateway, GatewayArgs
from infra.components.endpoints.realtime import ProductionVariantArgs, RealtimeEndpoint, RealtimeEndpointArgs
from tests.testkit import find_free_port, wait_http

if TYPE_CHECKING:
    from tests.infra.conftest import PulumiHarness

ROOT = Path(__file__).resolve().parents[2]
TAGS = {"Project": "selfmaker", "Stack": "t", "ManagedBy": "pulumi"}
CPU_AMI = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
ROW = b"2.0,1.0,0.0,0.0\n"


def _model(directory: Path) -> Path:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    x = rng.normal(size=(100, 4)).astype(np.float32)
    model = LogisticRegression().fit(x, (x[:, 0] > 0).astype(np.int64))
    onx = convert_sklearn(
        model,
        initial_types=[("input", FloatTensorType([None, 4]))],
        options={id(model): {"zipmap": False}},
        target_opset=17,
    )
    directory.mkdir(parents=True)
    (directory / "model.onnx").write_bytes(onx.SerializeToString())
    return directory


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Model servers of variants champion and challenger of endpoint churn (variant → base URL)."""
    model = _model(tmp_path_factory.mktemp("gateway-traffic") / "model")
    procs: list[subprocess.Popen[bytes]] = []
    urls: dict[str, str] = {}
    try:
        for variant in ("champion", "challenger"):
            port = find_free_port()
            env = {
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "SAGEMAKER_MODEL_SERVER_WORKERS": "1",
                "SELFMAKER_ENDPOINT_NAME": "churn",
                "SELFMAKER_VARIANT_NAME": variant,
            }
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "serving",
                    "--model-dir",
                    str(model),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                cwd=str(ROOT),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            procs.append(proc)
            urls[variant] = f"http://127.0.0.1:{port}"
            wait_http(urls[variant] + "/ping", timeout=90, alive=lambda p=proc: p.poll() is None)
        yield urls
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)


class RecordedRules:
    """The listener's recorded rules and default action, evaluated as ALB evaluates them."""

    def __init__(
        self, rules: list[dict[str, Any]], default: dict[str, Any], targets: dict[str, str], seed: int
    ) -> None:
        self.rules = sorted(rules, key=lambda r: r["priority"])
        self.default = default
        self.targets = targets  # target group ARN -> model server URL
        self.pick = random.Random(seed)
        self.lock = threading.Lock()

    @staticmethod
    def _matches(condition: dict[str, Any], method: str, path: str, headers: dict[str, str]) -> bool:
        if "pathPattern" in condition:  # case-sensitive, * and ? wildcards
            return any(fnmatch.fnmatchcase(path, v) for v in condition["pathPattern"]["values"])
        if "httpRequestMethod" in condition:
            return method in condition["httpRequestMethod"]["values"]
        if "httpHeader" in condition:  # header name and values compared case-insensitively
            value = headers.get(condition["httpHeader"]["httpHeaderName"].lower())
            return value is not None and any(
                fnmatch.fnmatch(value.lower(), v.lower()) for v in condition["httpHeader"]["values"]
            )
        raise AssertionError(f"condition this router does not know: {condition}")

    def route(self, method: str, path: str, headers: dict[str, str]) -> str | dict[str, Any]:
        """The model server URL to forward to, or the fixed response of the default action."""
        for rule in self.rules:
            if all(self._matches(c, method, path, headers) for c in rule["conditions"]):
                groups = rule["actions"][0]["forward"]["targetGroups"]
                with self.lock:
                    chosen = self.pick.choices(groups, weights=[g["weight"] for g in groups])[0]
                return self.targets[chosen["arn"]]
        return self.default["fixedResponse"]


def _router(rules: RecordedRules) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            target = rules.route("POST", self.path, headers)
            if isinstance(target, dict):
                out = target["messageBody"].encode()
                self.send_response(int(target["statusCode"]))
                self.send_header("Content-Type", target["contentType"])
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)
                return
            host = target.removeprefix("http://")
            conn = http.client.HTTPConnection(host, timeout=30)
            try:
                conn.request(
                    "POST",
                    self.path,
                    body=body,
                    headers={
                        k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")
                    },
                )
                answer = conn.getresponse()
                payload = answer.read()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("connection", "date", "server", "transfer-encoding"):
                        self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)
            finally:
                conn.close()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


@pytest.fixture
def gateway_url(pulumi_harness: PulumiHarness, servers: dict[str, str]) -> Iterator[str]:
    def build() -> None:
        gw = Gateway(
            "gw",
            GatewayArgs(
                vpc_id="vpc-1", subnet_ids=["subnet-a", "subnet-b"], tags=TAGS, allowed_cidrs=["10.1.0.0/16"]
            ),
        )
        variants = [
            ProductionVariantArgs(
                variant_name=v,
                model_data_uri="s3://models-b/models/m/model.tar.gz",
                image_tag="1.0",
                ami_parameter=CPU_AMI,
                initial_variant_weight=w,
            )
            for v, w in (("champion", 0.75), ("challenger", 0.25))
        ]
        RealtimeEndpoint(
            "churn",
            RealtimeEndpointArgs(
                gateway=gw,
                variants=variants,
                priority_block=120,
                vpc_id="vpc-1",
                subnet_ids=["subnet-a", "subnet-b"],
                instance_profile_arn="arn:aws:iam::123456789012:instance-profile/p",
                repository_url="123456789012.dkr.ecr.us-east-1.amazonaws.com/selfmaker-t/serving",
                region="us-east-1",
                prefix="selfmaker-t",
                tags=TAGS,
            ),
        )

    pulumi_harness.run(build)
    targets = {
        tg.state["arn"]: servers[tg.inputs["tags"]["Variant"]]
        for tg in pulumi_harness.of_type("aws:lb/targetGroup:TargetGroup")
    }
    rules = [r.inputs for r in pulumi_harness.of_type("aws:lb/listenerRule:ListenerRule")]
    (default,) = pulumi_harness.named("gw-listener").inputs["defaultActions"]
    router = _router(RecordedRules(rules, default, targets, seed=20))
    thread = threading.Thread(target=router.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{router.server_address[1]}"
    finally:
        router.shutdown()
        router.server_close()
        thread.join(timeout=10)


def test_boto3_through_the_recorded_rules_gets_weights_target_variant_and_json_404(gateway_url: str) -> None:
    client = boto3.client(
        "sagemaker-runtime",
        endpoint_url=gateway_url,
        region_name="us-east-1",
        config=Config(retries={"total_max_attempts": 1}),
    )
    seen = Counter()
    answers = set()
    for _ in range(400):
        out = client.invoke_endpoint(EndpointName="churn", Body=ROW, ContentType="text/csv")
        seen[out["InvokedProductionVariant"]] += 1
        answers.add(out["Body"].read())
    assert len(answers) == 1  # both variants serve the same model here
    # 0.75 / 0.25 became ALB weights 999 / 333; 400 draws: sd of the share ≈ 0.022
    assert set(seen) == {"champion", "challenger"}
    assert abs(seen["challenger"] / 400 - 0.25) < 0.07, seen
    for variant in ("champion", "challenger"):
        for _ in range(10):
            out = client.invoke_endpoint(
                EndpointName="churn", Body=ROW, ContentType="text/csv", TargetVariant=variant
            )
            assert out["InvokedProductionVariant"] == variant
    stream = client.invoke_endpoint_with_response_stream(
        EndpointName="churn", Body=ROW, ContentType="text/csv", TargetVariant="challenger"
    )
    assert b"".join(e["PayloadPart"]["Bytes"] for e in stream["Body"]) in answers
    assert stream["InvokedProductionVariant"] == "challenger"
    with pytest.raises(client.exceptions.ClientError) as missing:
        client.invoke_endpoint(EndpointName="fraud", Body=ROW, ContentType="text/csv")
    assert missing.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert missing.value.response["Error"]["Code"] == "ValidationError"
    with pytest.raises(client.exceptions.ModelError) as bad:
        client.invoke_endpoint(
            EndpointName="churn", Body=b"1.0,oops\n", ContentType="text/csv", TargetVariant="champion"
        )
    assert bad.value.response["OriginalStatusCode"] == 400
