"""Zero failed calls under changes (issue #26, "Robustness, measured" 1).

8 threads call an endpoint with no retries while it goes through 20 back-to-back ``UpdateEndpoint`` and 20
``UpdateEndpointWeightsAndCapacities`` calls, and another endpoint is deleted and recreated meanwhile: not one
call may fail. Before the fix a request that resolved the old deployment just as it was retired failed with
``ServiceUnavailable`` (11 of 165,201 calls).
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import platform_helpers as helpers  # on sys.path via conftest.py
import pytest
from botocore.exceptions import ClientError

log = logging.getLogger(__name__)

#: bounds of the whole test: the updates stop after this many seconds even if not all 20 + 20 ran
BUDGET_SECONDS = 150.0
#: times the neighbour endpoint is deleted and recreated at most (each starts a model server)
NEIGHBOUR_CYCLES = 4


class SplitBodyClient:
    """InvokeEndpoint over one keep-alive connection whose body leaves a moment after its headers, as it
    does over any real network (before the fix the platform resolved the endpoint before the body arrived:
    a swap in that window failed the call)."""

    def __init__(self, url: str, endpoint: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.path = f"/endpoints/{endpoint}/invocations"
        self.local = threading.local()
        self.connections: list[http.client.HTTPConnection] = []

    def close(self) -> None:
        for conn in self.connections:
            conn.close()

    def __call__(self) -> str:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
            self.connections.append(conn)
        try:
            conn.putrequest("POST", self.path)
            conn.putheader("Content-Type", "text/csv")
            conn.putheader("Content-Length", str(len(helpers.ROW)))
            conn.endheaders()
            time.sleep(0.002)  # the body's packet comes later than the headers' (not a readiness wait)
            conn.send(helpers.ROW)
            resp = conn.getresponse()
            body = resp.read()
        except Exception:
            conn.close()
            self.local.conn = None
            raise
        if resp.status != 200:
            raise AssertionError(f"{resp.status} {body[:300]!r}")
        return resp.headers["X-Amzn-Invoked-Production-Variant"]


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A `selfmaker up` whose model servers are forked from a pre-imported template (~0.3 s to start
    instead of a new interpreter's seconds), so 20 blue/green updates fit the test's time."""
    env = {"SELFMAKER_SERVERLESS_FORK_ALL_PROCESS_VARIANTS": "true"}
    with helpers.running(tmp_path_factory.mktemp("zf-home"), env) as server:
        yield server


def _wait_in_service(sm: Any, name: str) -> None:
    sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=helpers.WAIT)


def _churn(
    sm: Any, name: str, config: str, stop: threading.Event, cycles: list[int], errors: list[str]
) -> None:
    """Delete and recreate endpoint ``name`` until ``stop`` is set (bounded by the test's budget)."""
    deadline = time.monotonic() + BUDGET_SECONDS
    while not stop.is_set() and time.monotonic() < deadline and len(cycles) < NEIGHBOUR_CYCLES:
        try:
            sm.delete_endpoint(EndpointName=name)
            sm.get_waiter("endpoint_deleted").wait(EndpointName=name, WaiterConfig=helpers.WAIT)
            sm.create_endpoint(EndpointName=name, EndpointConfigName=config)
            _wait_in_service(sm, name)
        except Exception as exc:  # noqa: BLE001 - recorded and asserted on by the test
            errors.append(repr(exc))
            return
        cycles.append(1)


def test_no_call_fails_under_updates_weight_changes_and_a_neighbour_recreated(
    sm: Any, platform: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    model_uri = helpers.build_classifier_tar(tmp_path_factory.mktemp("zf-model")).as_uri()
    helpers.make_model(sm, "zf-model", model_uri)
    endpoint, neighbour = "zf-live", "zf-neighbour"
    configs = [f"{endpoint}-a", f"{endpoint}-b"]
    for config in configs:
        sm.create_endpoint_config(
            EndpointConfigName=config,
            ProductionVariants=[helpers.variant("X", "zf-model"), helpers.variant("Y", "zf-model")],
        )
    sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=configs[0])
    helpers.deploy(sm, neighbour, [helpers.variant("AllTraffic", "zf-model")])
    _wait_in_service(sm, endpoint)

    # no retries at all: one failed attempt is one failed call (boto3 with max_attempts 1, raw HTTP)
    runtime = helpers.client("sagemaker-runtime", platform.url)
    split_body = SplitBodyClient(platform.url, endpoint)
    turn = iter(range(10**9))

    def call() -> str:
        # half boto3, half a client whose body comes after its headers
        return helpers.invoke_variant(runtime, endpoint) if next(turn) % 2 else split_body()

    stop = threading.Event()
    cycles: list[int] = []
    churn_errors: list[str] = []
    churn = threading.Thread(
        target=_churn, args=(sm, neighbour, f"{neighbour}-cfg", stop, cycles, churn_errors), daemon=True
    )
    updates = weight_changes = 0
    deadline = time.monotonic() + BUDGET_SECONDS
    with helpers.LoadLoop(call, threads=8, max_calls=200_000, max_seconds=BUDGET_SECONDS) as load:
        load.wait_for_calls(50)
        churn.start()
        try:
            for i in range(20):
                if time.monotonic() > deadline:
                    break
                sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=configs[(i + 1) % 2])
                _wait_in_service(sm, endpoint)
                updates += 1
                weight = 0.1 + 0.8 * ((i * 7) % 10) / 10
                sm.update_endpoint_weights_and_capacities(
                    EndpointName=endpoint,
                    DesiredWeightsAndCapacities=[
                        {"VariantName": "X", "DesiredWeight": weight},
                        {"VariantName": "Y", "DesiredWeight": 1.0 - weight},
                    ],
                )
                _wait_in_service(sm, endpoint)
                weight_changes += 1
            load.wait_for_calls(50)
        finally:
            stop.set()
            churn.join(120)
    split_body.close()
    calls = load.count()
    log.warning(  # the figures, shown with -o log_cli=true
        f"zero-failures: {calls} calls, {len(load.errors)} failed, {updates} UpdateEndpoint, "
        f"{weight_changes} UpdateEndpointWeightsAndCapacities, {len(cycles)} delete+create of the neighbour"
    )
    assert load.errors == [], f"{len(load.errors)} of {calls} calls failed: {sorted(set(load.errors))[:5]}"
    assert churn_errors == []
    assert updates == 20 and weight_changes == 20
    assert len(cycles) >= 1
    assert {"X", "Y"} <= set(load.variants)
    for name in (endpoint, neighbour):
        try:
            sm.delete_endpoint(EndpointName=name)
        except ClientError:
            pass
