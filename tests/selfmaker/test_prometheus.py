"""``GET /metrics`` follows Prometheus' conventions, read back with prometheus_client's own parser: the
family writers on their own (escapes, histograms, special values), then the text of a running `selfmaker
up` with an endpoint of each kind (two production variants with a shadow and data capture, serverless,
async), and the example Grafana dashboard's queries against what that platform exposes."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import requests
from botocore.exceptions import ClientError
from hypothesis import given
from hypothesis import strategies as st
from platform_helpers import WAIT, PlatformProcess, build_classifier_tar, invoke_variant, make_model, variant
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from testkit import find_free_port, wait_http, wait_until

from selfmaker.api.metrics import Buckets, Histogram, family, histogram, render_metrics
from selfmaker.api.registry import discover
from selfmaker.platform import Platform
from selfmaker.settings import PlatformSettings
from selfmaker.state import Record, now

#: the label names a family may use (``le`` is a histogram bucket's; ``code`` an error class)
LABELS = {"endpoint", "variant", "instance_id", "status", "code", "training_job", "metric", "le"}
#: unit suffixes of the names that carry a unit (Prometheus' base units)
UNITS = ("_seconds", "_bytes", "_ratio")


def parse(text: str) -> dict[str, Metric]:
    """Families by name; fails on a name given twice."""
    found: dict[str, Metric] = {}
    for metric in text_string_to_metric_families(text):
        assert metric.name not in found, f"family {metric.name} appears twice"
        found[metric.name] = metric
    return found


# ---- the writers ----------------------------------------------------------------------------------------


def test_family_and_histogram_text_parses_back() -> None:
    lines: list[str] = []
    family(
        lines, "selfmaker_things_total", "counter", "Things\\ seen.\nTwice.", [({}, 3), ({"x": "y"}, None)]
    )
    family(
        lines,
        "selfmaker_odd",
        "gauge",
        "Odd values.",
        [({"endpoint": 'a"b\\c\nd'}, math.inf), ({"endpoint": "n"}, math.nan), ({"endpoint": "z"}, -0.5)],
    )
    hist = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 7.0):
        hist.observe(value)
    histogram(lines, "selfmaker_wait_seconds", "Waits.", [({"endpoint": "e"}, hist.value()), ({}, None)])
    assert "selfmaker_things_total 3" in lines  # no empty braces
    families = parse("\n".join(lines) + "\n")
    things = families["selfmaker_things"]
    assert things.type == "counter" and things.documentation == "Things\\ seen.\nTwice."
    assert [(s.name, s.labels, s.value) for s in things.samples] == [("selfmaker_things_total", {}, 3)]
    odd = {s.labels["endpoint"]: s.value for s in families["selfmaker_odd"].samples}
    assert odd['a"b\\c\nd'] == math.inf and math.isnan(odd["n"]) and odd["z"] == -0.5
    wait = families["selfmaker_wait_seconds"]
    assert wait.type == "histogram"
    samples = {(s.name, s.labels.get("le")): s.value for s in wait.samples}
    assert samples == {
        ("selfmaker_wait_seconds_bucket", "0.1"): 2,  # le: 0.1 itself is in the 0.1 bucket
        ("selfmaker_wait_seconds_bucket", "1.0"): 3,
        ("selfmaker_wait_seconds_bucket", "+Inf"): 4,
        ("selfmaker_wait_seconds_sum", None): pytest.approx(7.65),
        ("selfmaker_wait_seconds_count", None): 4,
    }
    with pytest.raises(ValueError, match="2 bounds need 3 counts"):
        histogram([], "selfmaker_bad_seconds", "Bad.", [({}, Buckets((1.0, 2.0), [1, 2], 3.0))])


@given(
    values=st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=30),
    label=st.text(max_size=12),
)
def test_a_histogram_counts_every_observation_once(values: list[float], label: str) -> None:
    hist = Histogram()
    for value in values:
        hist.observe(value)
    lines: list[str] = []
    histogram(lines, "selfmaker_x_seconds", "X.", [({"endpoint": label}, hist.value())])
    samples = parse("\n".join(lines) + "\n")["selfmaker_x_seconds"].samples
    buckets = [s for s in samples if s.name.endswith("_bucket")]
    assert all(s.labels["endpoint"] == label for s in samples)
    assert [s.value for s in buckets] == sorted(s.value for s in buckets)  # cumulative
    for s in buckets:
        bound = float(s.labels["le"])
        assert s.value == sum(1 for v in values if v <= bound)
    assert samples[-1].name == "selfmaker_x_seconds_count" and samples[-1].value == len(values)


def test_training_jobs_by_status_and_the_metrics_of_running_ones(tmp_path: Path) -> None:
    """A Platform (not started) on a fresh home, whose store holds training jobs as TrainingManager keeps
    them: a running job's live FinalMetricDataList becomes gauges; a finished job's does not."""
    platform = Platform(PlatformSettings(home=tmp_path / "home"), discover())
    try:
        metrics = [
            {"MetricName": "validation:auc", "Value": 0.91, "Timestamp": now()},
            {"MetricName": 'odd "name"', "Value": 2, "Timestamp": now()},
        ]
        for name, status in (("running", "InProgress"), ("done", "Completed"), ("done-2", "Completed")):
            arn = platform.services.arn("training-job", name)
            record = Record("training-job", name, arn, status, now(), now(), {"FinalMetricDataList": metrics})
            assert platform.services.store.insert(record)
        families = parse(render_metrics(platform.services))
    finally:
        platform.services.store.close()
    assert samples(families, "selfmaker_training_metric") == {
        "selfmaker_training_metric{metric=validation:auc,training_job=running}": 0.91,
        'selfmaker_training_metric{metric=odd "name",training_job=running}': 2,
    }
    jobs = samples(families, "selfmaker_training_jobs")
    assert jobs["selfmaker_training_jobs{status=InProgress}"] == 1
    assert jobs["selfmaker_training_jobs{status=Completed}"] == 2
    assert jobs["selfmaker_training_jobs{status=Failed}"] == 0
    assert samples(families, "selfmaker_endpoints", status="InService") == {"selfmaker_endpoints": 0}


# ---- a running platform ---------------------------------------------------------------------------------

ENDPOINTS = ("prom-rt", "prom-sl", "prom-async")
CALLS = 12


@dataclass
class Scenario:
    """What the module's platform exposed after the traffic, and which variant answered each call."""

    families: dict[str, Metric]
    answered: list[str]


@pytest.fixture(scope="module")
def scenario(
    platform_server: PlatformProcess, sm: Any, smr: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scenario]:
    """An endpoint of each kind on the shared platform, some traffic, and the parsed ``/metrics`` after."""
    home = tmp_path_factory.mktemp("prom")
    make_model(sm, "prom-a", build_classifier_tar(home / "a").as_uri())
    make_model(sm, "prom-b", build_classifier_tar(home / "b", seed=3).as_uri())
    sm.create_endpoint_config(
        EndpointConfigName="prom-rt-cfg",
        ProductionVariants=[variant("a", "prom-a", 3), variant("b", "prom-b", 1)],
        # a shadow weighing as much as the heaviest production variant gets a copy of every request
        ShadowProductionVariants=[variant("shadow", "prom-b", 3)],
        DataCaptureConfig={
            "InitialSamplingPercentage": 100,
            "DestinationS3Uri": (home / "capture").as_uri(),
            "CaptureOptions": [{"CaptureMode": "Input"}],
        },
    )
    sm.create_endpoint_config(
        EndpointConfigName="prom-sl-cfg",
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": "prom-a",
                "ServerlessConfig": {"MemorySizeInMB": 1024, "MaxConcurrency": 2},
            }
        ],
    )
    sm.create_endpoint_config(
        EndpointConfigName="prom-async-cfg",
        ProductionVariants=[variant("AllTraffic", "prom-a")],
        AsyncInferenceConfig={"OutputConfig": {"S3OutputPath": (home / "async").as_uri()}},
    )
    try:
        for name in ENDPOINTS:
            sm.create_endpoint(EndpointName=name, EndpointConfigName=f"{name}-cfg")
        for name in ENDPOINTS:
            sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)
        answered = [invoke_variant(smr, "prom-rt") for _ in range(CALLS)]
        with pytest.raises(ClientError, match="ModelError"):  # the model answers 400: a 4xx of variant b
            smr.invoke_endpoint(EndpointName="prom-rt", Body=b"x", ContentType="text/csv", TargetVariant="b")
        invoke_variant(smr, "prom-sl")
        url = platform_server.url + "/metrics"

        def settled() -> bool:
            """Every shadow copy timed (they run after the answers), the cold start sampled (each second)."""
            families = parse(requests.get(url, timeout=10).text)
            shadow = samples(families, "selfmaker_shadow_latency_seconds", endpoint="prom-rt")
            setup = samples(families, "selfmaker_model_setup_seconds", endpoint="prom-sl")
            return (
                shadow.get("selfmaker_shadow_latency_seconds_count{variant=shadow}") == CALLS
                and setup.get("selfmaker_model_setup_seconds_count{variant=AllTraffic}") == 1
            )

        wait_until(settled, timeout=30, what="every shadow copy timed and the cold start sampled")
        resp = requests.get(url, timeout=10)
        assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/plain")
        yield Scenario(parse(resp.text), answered)
    finally:
        for name in ENDPOINTS:
            try:
                sm.delete_endpoint(EndpointName=name)
            except Exception:  # noqa: BLE001 - one that failed to create has nothing to delete
                pass


def samples(families: dict[str, Metric], name: str, **labels: str) -> dict[str, float]:
    """``{sample name + sorted other labels: value}`` of family ``name`` whose labels include ``labels``."""
    out: dict[str, float] = {}
    for s in families[name].samples:
        if all(s.labels.get(k) == v for k, v in labels.items()):
            rest = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k not in labels)
            out[s.name + (f"{{{rest}}}" if rest else "")] = s.value
    return out


def test_every_family_follows_the_naming_conventions(scenario: Scenario) -> None:
    assert len(scenario.families) > 20
    for name, metric in scenario.families.items():
        assert name.startswith("selfmaker_"), name
        assert name == name.lower() and "__" not in name, name
        assert metric.documentation, f"{name} has no HELP"
        assert not name.endswith("_total"), f"{name}: the parser strips _total from a counter's name"
        if metric.type == "counter":
            assert all(s.name == name + "_total" for s in metric.samples), name
        elif metric.type == "histogram":
            assert name.endswith(UNITS), f"histogram {name} has no unit"
            kinds = {s.name.removeprefix(name) for s in metric.samples}
            assert kinds <= {"_bucket", "_sum", "_count"}, name
        else:
            assert metric.type == "gauge", f"{name}: {metric.type}"
            assert all(s.name == name for s in metric.samples), name
        for s in metric.samples:
            assert set(s.labels) <= LABELS, f"{name}: labels {sorted(s.labels)}"
            assert "instance" not in s.labels  # Prometheus' own label for the scraped target
        # no p50/p99 gauges, no unit that is not a base unit
        assert not any(part in name for part in ("_p50", "_p99", "_mb", "_ms", "_share", "_percent")), name


def test_the_platform_figures_of_each_kind(scenario: Scenario) -> None:
    answered, families = scenario.answered, scenario.families
    # invocations: per variant, every call counted once, the failed one as a 4xx of its variant
    for name in ("a", "b"):
        calls = answered.count(name) + (name == "b")
        rt = {"endpoint": "prom-rt", "variant": name}
        assert samples(families, "selfmaker_invocations", **rt) == {"selfmaker_invocations_total": calls}
        assert samples(families, "selfmaker_invocation_errors", **rt) == {
            "selfmaker_invocation_errors_total{code=4xx}": name == "b",
            "selfmaker_invocation_errors_total{code=5xx}": 0,
        }
        for latency in ("selfmaker_model_latency_seconds", "selfmaker_overhead_latency_seconds"):
            histogram = samples(families, latency, **rt)
            assert histogram[f"{latency}_count"] == histogram[f"{latency}_bucket{{le=+Inf}}"] == calls
            assert 0 < histogram[f"{latency}_sum"] < 60 * calls
    setup = samples(families, "selfmaker_model_setup_seconds", endpoint="prom-sl", variant="AllTraffic")
    assert (
        setup["selfmaker_model_setup_seconds_count"] == 1 and setup["selfmaker_model_setup_seconds_sum"] > 0
    )
    # variants: instances, weights, and the model servers' own counts add up to the calls made
    assert samples(families, "selfmaker_variant_instances", endpoint="prom-rt") == {
        "selfmaker_variant_instances{variant=a}": 1,
        "selfmaker_variant_instances{variant=b}": 1,
        "selfmaker_variant_instances{variant=shadow}": 1,
    }
    assert samples(families, "selfmaker_variant_weight", endpoint="prom-rt") == {
        "selfmaker_variant_weight{variant=a}": 3.0,
        "selfmaker_variant_weight{variant=b}": 1.0,
    }
    for name in ("a", "b"):
        served = samples(families, "selfmaker_instance_invocations", endpoint="prom-rt", variant=name)
        assert len(served) == 1 and list(served)[0].startswith(
            "selfmaker_instance_invocations_total{instance_id="
        )
        assert sum(served.values()) == answered.count(name) + (name == "b")
    assert samples(families, "selfmaker_instance_in_flight_requests", endpoint="prom-rt", variant="a")
    assert samples(families, "selfmaker_endpoints", status="InService")["selfmaker_endpoints"] >= len(
        ENDPOINTS
    )
    assert samples(families, "selfmaker_training_jobs", status="Stopping") == {"selfmaker_training_jobs": 0}
    for jobs in ("selfmaker_transform_jobs", "selfmaker_processing_jobs", "selfmaker_tuning_jobs"):
        assert "InProgress" in {s.labels["status"] for s in families[jobs].samples}
    # shadow: counters and a latency histogram
    shadow = {"endpoint": "prom-rt", "variant": "shadow"}
    assert samples(families, "selfmaker_shadow_requests", **shadow) == {
        "selfmaker_shadow_requests_total": CALLS
    }
    latency = samples(families, "selfmaker_shadow_latency_seconds", **shadow)
    assert latency["selfmaker_shadow_latency_seconds_bucket{le=+Inf}"] == CALLS
    assert 0 < latency["selfmaker_shadow_latency_seconds_sum"] < 60 * CALLS
    # data capture (platform-wide): every production request captured
    assert samples(families, "selfmaker_capture_submitted")["selfmaker_capture_submitted_total"] >= CALLS
    # serverless: sizes in bytes, one cold request in the histogram
    serverless = {"endpoint": "prom-sl", "variant": "AllTraffic"}
    assert samples(families, "selfmaker_serverless_memory_size_bytes", **serverless) == {
        "selfmaker_serverless_memory_size_bytes": 1024 * 1024 * 1024
    }
    assert samples(families, "selfmaker_serverless_max_concurrency", **serverless) == {
        "selfmaker_serverless_max_concurrency": 2
    }
    first = samples(families, "selfmaker_serverless_first_answer_seconds", **serverless)
    assert first["selfmaker_serverless_first_answer_seconds_count"] == 1
    assert samples(families, "selfmaker_serverless_in_flight_requests", **serverless) == {
        "selfmaker_serverless_in_flight_requests": 0
    }
    # async: an empty backlog
    assert samples(families, "selfmaker_async_backlog_size", endpoint="prom-async") == {
        "selfmaker_async_backlog_size": 0
    }


# ---- the example Grafana dashboard ----------------------------------------------------------------------

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"
#: families that have samples only while something happens that the scenario leaves out (a guarded
#: deployment in progress, a training job running): their HELP and TYPE must be there all the same
SOMETIMES_EMPTY = {
    "selfmaker_deployment_new_fleet_traffic_ratio",
    "selfmaker_deployment_rollbacks",
    "selfmaker_deployment_fallbacks",
    "selfmaker_training_metric",
}


def selectors(expr: str) -> tuple[set[str], set[str]]:
    """The metric names and label names a PromQL expression uses (parsed by promql-parser; Grafana's
    variables replaced first as Grafana would)."""
    parsed = promql_parser.parse(expr.replace("$__rate_interval", "5m"))
    names: set[str] = set()
    labels: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            labels.update(m.name for m in node.matchers.matchers if m.name != "__name__")
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            labels.update(node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            matching = node.modifier.matching
            labels.update(matching.labels if matching is not None else ())

    promql_parser.walk(parsed, visit)
    return names, labels


def test_selectors_sees_names_and_labels() -> None:
    names, labels = selectors(
        'sum by (endpoint, le) (rate(a_bucket{variant=~"$v"}[$__rate_interval])) / ignoring (code) '
        "group_left sum by (endpoint) (b_total)"
    )
    assert names == {"a_bucket", "b_total"} and labels == {"endpoint", "le", "variant", "code"}
    with pytest.raises(ValueError):
        selectors("sum by (endpoint (rate(a[5m]))")


def test_the_grafana_dashboard_queries_only_what_metrics_exposes(scenario: Scenario) -> None:
    # what a query may name: a gauge's family name, a counter's _total, a histogram's three series
    series: dict[str, str] = {}
    for name, metric in scenario.families.items():
        kinds = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(metric.type, [""])
        series.update({name + suffix: name for suffix in kinds})
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    used: set[str] = set()
    queries = 0
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"], f"{panel['title']} has no unit"
        for target in panel["targets"]:
            names, labels = selectors(target["expr"])
            unknown = sorted(names - set(series))
            assert not unknown, f"panel {panel['title']!r} queries {unknown}, which /metrics does not expose"
            assert labels <= LABELS, f"panel {panel['title']!r} uses labels {sorted(labels - LABELS)}"
            used |= {series[n] for n in names}
            queries += 1
    for name in ("endpoint", "training_job"):  # label_values(metric, label) of the query variables
        metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", variables[name]["definition"]).groups()
        assert metric in series and label in LABELS
    assert queries >= 20
    assert {
        "selfmaker_invocations",
        "selfmaker_invocation_errors",
        "selfmaker_model_latency_seconds",
        "selfmaker_variant_instances",
        "selfmaker_async_backlog_size",
        "selfmaker_serverless_in_flight_requests",
        "selfmaker_shadow_mismatches",
        "selfmaker_training_jobs",
    } <= used
    empty = sorted(n for n in used - SOMETIMES_EMPTY if not scenario.families[n].samples)
    assert not empty, f"the dashboard charts families the scenario left without samples: {empty}"


def test_a_real_prometheus_scrapes_the_platform_and_answers_the_dashboard(
    scenario: Scenario, platform_server: PlatformProcess, tmp_path: Path
) -> None:
    """Debian's Prometheus (``make prometheus``) scrapes the platform every second; every dashboard query,
    as Grafana would send it with "All" selected, then returns series."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip(
            "no prometheus binary on PATH: `make prometheus` (scripts/install-prometheus.sh) installs it"
        )
    port = find_free_port()
    config = tmp_path / "prometheus.yml"
    target = platform_server.url.removeprefix("http://")
    scrape = {"job_name": "selfmaker", "scrape_interval": "1s", "static_configs": [{"targets": [target]}]}
    config.write_text(json.dumps({"scrape_configs": [scrape]}), encoding="utf-8")  # JSON is YAML
    log = tmp_path / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"

    def query(expr: str) -> list[dict[str, Any]]:
        answer = requests.get(base + "/api/v1/query", params={"query": expr}, timeout=10).json()
        assert answer["status"] == "success", f"{expr}: {answer}"
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    try:
        wait_http(base + "/-/ready", timeout=60, alive=lambda: proc.poll() is None)
        # three scrapes: every rate() over the dashboard's interval has two samples or more
        wait_until(
            lambda: (
                [float(r["value"][1]) for r in query('count_over_time(up{job="selfmaker"}[1m])')] >= [3.0]
            ),
            timeout=30,
            what="three scrapes of the platform",
        )
        (health,) = requests.get(base + "/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        assert (health["health"], health["lastError"]) == ("up", ""), health
        assert [r["value"][1] for r in query('min_over_time(up{job="selfmaker"}[1m])')] == ["1"]
        dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
        empty = []
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"].replace("$__rate_interval", "10s")
                expr = expr.replace('"$endpoint"', '".*"').replace('"$training_job"', '".*"')
                names, _ = selectors(expr)
                families = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in names}
                if not query(expr) and not families & SOMETIMES_EMPTY:
                    empty.append(f"{panel['title']}: {expr}")
        assert not empty, "dashboard queries Prometheus answers with no series:\n" + "\n".join(empty)
        # Prometheus read the same families the parser did
        names = {r["metric"]["__name__"] for r in query('{job="selfmaker", __name__=~"selfmaker_.+"}')}
        assert "selfmaker_model_latency_seconds_bucket" in names and "selfmaker_invocations_total" in names
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
