"""The web console in a real headless Chromium (Debian's, driven by selenium through the system
chromedriver) against a running `selfmaker up` with two endpoints under load (one split 3:1), an async and
a serverless endpoint, and a finished tuning job of two script-mode training jobs.

One scenario shares the platform, the load and the browser: the overview's charts draw non-empty series,
the live traffic split matches the 3:1 weights within 5 %, a weight change shows within 5 s, the endpoint
page draws its 10-minute and 3-hour windows, the training and tuning job pages draw their curves, HTML in a
hyperparameter and a log line stays text, and the browser's console logs no error. It saves the
screenshots docs/observability.md shows (docs/img/console-*.png). The console's JSON is checked over plain
HTTP too (those tests run without a browser).

Chromium comes from scripts/install-browser.sh (`make test` runs it); without it the browser tests skip
and say so (tests/selfmaker/browserkit.py). The browser's requests to any host but loopback go to a dead
proxy.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

import pytest
import requests
from browserkit import headless_chromium, js_errors
from platform_helpers import (
    ROOT,
    WAIT,
    LoadLoop,
    build_classifier_tar,
    deploy,
    invoke_variant,
    make_model,
    running,
    variant,
)
from testkit import wait_until

from selfmaker.console.series import error_line
from selfmaker.console.views import transform_progress

ROLE = "arn:aws:iam::123456789012:role/selfmaker"
#: what a page must show as text, never run: a hyperparameter value and a log line of the training job
HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=1</script>'
#: a script-mode training script: its curves depend on the tuned ``rate``
TRAIN = f"""
import sys, time
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
rate = float(args.get("--rate", "0.5"))
print({HOSTILE!r}, flush=True)
for epoch in range(6):
    loss, accuracy = 1.0 / (1 + epoch * rate), min(0.99, 0.5 + epoch * 0.06 * rate)
    print(f"epoch={{epoch}} loss={{loss:.4f}} accuracy={{accuracy:.3f}}", flush=True)
    time.sleep(0.3)
"""
METRICS = [
    {"Name": "train:loss", "Regex": r"loss=([0-9.]+)"},
    {"Name": "validation:accuracy", "Regex": r"accuracy=([0-9.]+)"},
]
IMAGES = ROOT / "docs" / "img"


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A `selfmaker up` with endpoints ``ab`` (Champion 3 : Challenger 1) and ``solo`` under a bounded
    background load, and a finished tuning job of two script-mode training jobs with metrics and HTML in
    a hyperparameter and a log line."""
    home = tmp_path_factory.mktemp("console-home")
    with running(home) as server:
        sm, smr = server.sagemaker(), server.runtime()
        make_model(
            sm, "console-model", build_classifier_tar(tmp_path_factory.mktemp("console-model")).as_uri()
        )
        deploy(
            sm,
            "ab",
            [variant("Champion", "console-model", 3), variant("Challenger", "console-model", 1)],
            wait=False,
        )
        deploy(sm, "solo", [variant("AllTraffic", "console-model")], wait=False)
        # an async endpoint: its backlog is charted
        outputs = tmp_path_factory.mktemp("queue").as_uri()
        sm.create_endpoint_config(
            EndpointConfigName="queue-cfg",
            ProductionVariants=[variant("AllTraffic", "console-model")],
            AsyncInferenceConfig={"OutputConfig": {"S3OutputPath": outputs}},
        )
        sm.create_endpoint(EndpointName="queue", EndpointConfigName="queue-cfg")
        # a serverless endpoint: its model servers are listed with their concurrency
        serverless = {"MemorySizeInMB": 1024, "MaxConcurrency": 2}
        sm.create_endpoint_config(
            EndpointConfigName="lambda-cfg",
            ProductionVariants=[
                {"VariantName": "AllTraffic", "ModelName": "console-model", "ServerlessConfig": serverless}
            ],
        )
        sm.create_endpoint(EndpointName="lambda", EndpointConfigName="lambda-cfg")
        code = tmp_path_factory.mktemp("console-code")
        (code / "train.py").write_text(TRAIN)
        sm.create_hyper_parameter_tuning_job(
            HyperParameterTuningJobName="console-tune",
            HyperParameterTuningJobConfig={
                "Strategy": "Random",
                "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "validation:accuracy"},
                "ResourceLimits": {"MaxNumberOfTrainingJobs": 2, "MaxParallelTrainingJobs": 2},
                "ParameterRanges": {
                    "ContinuousParameterRanges": [{"Name": "rate", "MinValue": "0.2", "MaxValue": "1.0"}]
                },
                "RandomSeed": 7,
            },
            TrainingJobDefinition={
                "AlgorithmSpecification": {
                    "TrainingImage": "selfmaker",
                    "TrainingInputMode": "File",
                    "MetricDefinitions": METRICS,
                },
                "RoleArn": ROLE,
                "StaticHyperParameters": {
                    "sagemaker_program": "train.py",
                    "sagemaker_submit_directory": code.as_uri(),
                    "note": HOSTILE,
                },
                "OutputDataConfig": {"S3OutputPath": tmp_path_factory.mktemp("console-out").as_uri()},
                "ResourceConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.large", "VolumeSizeInGB": 1},
                "StoppingCondition": {"MaxRuntimeInSeconds": 120},
            },
        )
        for name in ("ab", "solo", "queue", "lambda"):
            sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)
        turn = [0]

        def invoke() -> str:
            turn[0] += 1
            return invoke_variant(smr, "ab" if turn[0] % 3 else "solo")

        with LoadLoop(invoke, threads=3, max_calls=20_000, max_seconds=90) as load:
            load.wait_for_calls(50)
            wait_until(
                lambda: (
                    sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="console-tune")[
                        "HyperParameterTuningJobStatus"
                    ]
                    in ("Completed", "Failed", "Stopped")
                ),
                timeout=120,
                what="the tuning job to end",
                interval=0.25,
            )
            trials = sm.list_training_jobs_for_hyper_parameter_tuning_job(
                HyperParameterTuningJobName="console-tune", SortBy="CreationTime", SortOrder="Ascending"
            )["TrainingJobSummaries"]
            assert [t["TrainingJobStatus"] for t in trials] == ["Completed", "Completed"], trials
            yield {"server": server, "sm": sm, "smr": smr, "load": load, "job": trials[0]["TrainingJobName"]}
        assert not load.errors, load.errors[:3]


@pytest.fixture(scope="module")
def browser(console: dict[str, Any]) -> Iterator[Any]:
    with headless_chromium() as driver:
        yield driver


def _chart_points(driver: Any) -> dict[str, list[int]]:
    """Non-null values per series of every uPlot chart on the page (what the browser drew)."""
    return driver.execute_script(
        """
        const out = {};
        for (const [id, entry] of window.selfmakerConsole.charts) {
          out[id] = entry.plot ? entry.plot.data.slice(1).map((s) => s.filter((v) => v !== null).length) : [];
        }
        return out;
        """
    )


def _shares(driver: Any, endpoint: str) -> dict[str, Any]:
    return driver.execute_script(
        """
        const cards = [...document.querySelectorAll("[data-endpoint]")];
        const card = cards.find((c) => c.dataset.endpoint === arguments[0]);
        if (!card) return null;
        const table = card.querySelector("table");
        const rows = {};
        for (const row of card.querySelectorAll("tr[data-variant]")) {
          rows[row.dataset.variant] = {
            configured: parseFloat(row.querySelector("[data-configured-share]").dataset.configuredShare),
            live: row.querySelector("[data-live-share]").dataset.liveShare,
          };
        }
        return { invocations: parseInt(table.dataset.splitInvocations || "0"), rows };
        """,
        endpoint,
    )


def _screenshot(driver: Any, name: str) -> None:
    """A full-page screenshot into docs/img (the window grown to the page's height, then put back)."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(max(int(height), 600), 3000))
    IMAGES.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(IMAGES / name))
    driver.set_window_size(1400, 1000)


def _no_js_errors(driver: Any) -> None:
    errors = js_errors(driver)
    assert not errors, errors[:5]


def test_console_json(console: dict[str, Any]) -> None:
    url = console["server"].url
    overview = requests.get(url + "/console/api/overview", timeout=30).json()
    ab = next(e for e in overview["endpoints"] if e["name"] == "ab")
    assert ab["status"] == "InService"
    assert {v["name"]: v["configuredShare"] for v in ab["variants"]} == {"Champion": 0.75, "Challenger": 0.25}
    assert all(len(v["instances"]) == 1 for v in ab["variants"])
    assert console["job"] in [j["name"] for j in overview["jobs"]["training"]]
    assert [j["name"] for j in overview["jobs"]["tuning"]] == ["console-tune"]
    page = requests.get(url + "/console/api/endpoints/ab", params={"window": "3h"}, timeout=30).json()
    assert page["window"] == "3h" and page["series"]["period"] == 60
    assert sum(page["series"]["variants"]["Champion"]["invocations"]) > 0  # the live minute is counted
    job = requests.get(url + f"/console/api/training-jobs/{console['job']}", timeout=30).json()
    assert job["status"] == "Completed" and job["hyperParameters"]["note"] == HOSTILE
    assert job["tuningJob"] == "console-tune"
    assert any(HOSTILE in line for line in job["log"])
    assert set(job["curves"]) == {"train:loss", "validation:accuracy"}
    assert all(len(c["t"]) >= 2 and len(c["t"]) == len(c["v"]) for c in job["curves"].values())
    assert [t["Status"] for t in job["transitions"]][-1] == "Completed"
    # the tuning job: each trial's objective in start order, and the best so far (Maximize)
    tuning = requests.get(url + "/console/api/tuning-jobs/console-tune", timeout=30).json()
    objectives = [t["objective"] for t in tuning["trials"]]
    assert len(objectives) == 2 and None not in objectives
    assert [t["bestSoFar"] for t in tuning["trials"]] == [objectives[0], max(objectives)]
    assert tuning["objective"] == {"name": "validation:accuracy", "type": "Maximize"}
    # a serverless variant: its pool's figures after a cold start
    assert invoke_variant(console["smr"], "lambda") == "AllTraffic"
    lam = next(
        e
        for e in requests.get(url + "/console/api/overview", timeout=30).json()["endpoints"]
        if e["name"] == "lambda"
    )
    figures = lam["variants"][0]["serverlessFigures"]
    assert figures["max_concurrency"] == 2 and figures["invocations"] >= 1 and figures["cold_starts"] >= 1
    # requests the model refuses: counted as 4xx on the endpoint page, and its log lines listed
    for _ in range(3):
        refused = requests.post(
            url + "/endpoints/solo/invocations",
            data=b"abc,def",
            headers={"Content-Type": "text/csv"},
            timeout=30,
        )
        assert refused.status_code == 424 and refused.json()["__type"] == "ModelError"
    solo: dict[str, Any] = {}

    def counted() -> bool:
        solo.update(requests.get(url + "/console/api/endpoints/solo", timeout=30).json())
        return sum(solo["series"]["variants"]["AllTraffic"]["errors4xx"]) >= 3 and len(solo["errors"]) >= 3

    wait_until(counted, timeout=10, what="the refused requests on the endpoint page", interval=0.25)
    assert {e["variant"] for e in solo["errors"]} == {"AllTraffic"}
    assert sum("POST /invocations 400" in e["line"] for e in solo["errors"]) >= 3, solo["errors"]
    # bad input: JSON errors in the runtime's shape, never a 500
    for path, status, code in (
        ("/console/api/endpoints/ab?window=7y", 400, "ValidationException"),
        ("/console/api/endpoints/nope", 400, "ValidationException"),
        ("/console/api/training-jobs/nope", 400, "ValidationException"),
        ("/console/api/tuning-jobs/nope", 400, "ValidationException"),
        ("/console/api/transform-jobs/nope", 400, "ValidationException"),
        ("/console/api/processing-jobs/nope", 400, "ValidationException"),
        ("/console/api/whatever", 404, "NotFound"),
    ):
        resp = requests.get(url + path, timeout=30)
        assert (resp.status_code, resp.json()["__type"]) == (status, code), (path, resp.text)
    # GET / is the console for a browser only; POST / is still the control plane
    assert requests.get(url + "/", timeout=30).status_code == 400
    assert console["sm"].list_endpoints()["Endpoints"]


def test_transform_progress_reads_the_last_progress_line() -> None:
    lines = [
        "2026-01-01T00:00:00.000Z running with the model at /m (resume=False)",
        "2026-01-01T00:00:05.000Z records=10 bytes=100/400 parts=1/4 files=1/2",
        "2026-01-01T00:00:10.000Z records=30 bytes=300/400 parts=3/4 files=1/2",
        "2026-01-01T00:00:11.000Z something else",
    ]
    assert transform_progress(lines) == {
        "records": 30,
        "bytesDone": 300,
        "bytesTotal": 400,
        "partsDone": 3,
        "partsTotal": 4,
        "filesDone": 1,
        "filesTotal": 2,
    }
    assert transform_progress(lines[:1]) is None


def test_the_package_ships_every_static_file() -> None:
    """pyproject's package data names every file of the console's static directory (a wheel, and so an
    image or `pip install .`, carries the pages, the script and the vendored uPlot with its licence)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    globs = config["tool"]["setuptools"]["package-data"]["selfmaker.console"]
    package = ROOT / "selfmaker" / "console"
    files = [p.relative_to(package) for p in (package / "static").rglob("*") if p.is_file()]
    files = [f for f in files if "__pycache__" not in f.parts]
    assert {"index.html", "console.js", "uPlot.iife.min.js", "uPlot.LICENSE"} <= {f.name for f in files}
    missing = [str(f) for f in files if not any(PurePosixPath(f.as_posix()).match(g) for g in globs)]
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"


def test_error_lines_of_model_server_logs() -> None:
    access = '{"ts":"2026-01-01T00:00:00.000Z","level":"INFO","msg":"POST /invocations %d","status":%d}'
    assert error_line(access % (200, 200)) is None
    assert error_line(access % (500, 500)) == "2026-01-01T00:00:00.000Z INFO POST /invocations 500"
    warning = '{"ts":"t","level":"WARNING","msg":"slow <b>model</b>"}'
    assert error_line(warning) == "t WARNING slow <b>model</b>"  # text: the page never parses it
    assert error_line("Traceback (most recent call last):") == "Traceback (most recent call last):"
    assert error_line("{not json but an Exception}") == "{not json but an Exception}"
    assert error_line("listening on 8080") is None


def test_console_in_chromium(console: dict[str, Any], browser: Any) -> None:
    url, sm, load = console["server"].url, console["sm"], console["load"]
    browser.get(url + "/")  # a browser asking for / lands on the console
    assert browser.current_url.rstrip("/").endswith("/console")

    # the overview: both endpoints' charts draw data, and the live split of ab is its 3:1 weights
    def drawn() -> bool:
        points = _chart_points(browser)
        return all(
            any(n > 0 for n in points.get(f"ov-{ep}-{kind}", []))
            for ep in ("ab", "solo")
            for kind in ("rate", "latency")
        )

    wait_until(drawn, timeout=30, what="the overview's charts to draw data", interval=0.25)
    wait_until(
        lambda: _chart_points(browser).get("ov-queue-backlog", [0])[0] > 0,
        timeout=10,
        what="the async endpoint's backlog chart",
        interval=0.25,
    )

    def enough() -> bool:
        shares = _shares(browser, "ab")
        # 600 draws of a 3:1 choice: the share's standard deviation is 1.8 %, so 5 % is 2.8 of them (and
        # 20 req/s over the 30-second window is within reach of a loaded 2-core machine)
        return bool(shares) and shares["invocations"] >= 600

    wait_until(enough, timeout=45, what="600 invocations of ab in the split window", interval=0.25)
    settle = time.monotonic() + 10  # more draws where the machine makes them soon: 1,000 → 3.7 deviations
    while _shares(browser, "ab")["invocations"] < 1000 and time.monotonic() < settle:
        time.sleep(0.25)
    shares = _shares(browser, "ab")
    assert abs(float(shares["rows"]["Champion"]["live"]) - 0.75) <= 0.05, shares
    assert abs(float(shares["rows"]["Challenger"]["live"]) - 0.25) <= 0.05, shares
    _screenshot(browser, "console-overview.png")

    # a weight change shows within 5 s (the page refreshes itself; no reload)
    refreshes = int(browser.execute_script("return document.body.dataset.refreshes"))
    sm.update_endpoint_weights_and_capacities(
        EndpointName="ab",
        DesiredWeightsAndCapacities=[
            {"VariantName": "Champion", "DesiredWeight": 1.0},
            {"VariantName": "Challenger", "DesiredWeight": 1.0},
        ],
    )
    changed = time.monotonic()
    wait_until(
        lambda: _shares(browser, "ab")["rows"]["Champion"]["configured"] == 0.5,
        timeout=5,
        what="the new weights on the page",
        interval=0.1,
    )
    assert time.monotonic() - changed <= 5
    assert int(browser.execute_script("return document.body.dataset.refreshes")) > refreshes

    # the endpoint page: per-variant charts over the 10-minute window, the model servers listed
    browser.get(url + "/console/endpoints/ab")
    wait_until(
        lambda: all(n > 0 for n in _chart_points(browser).get("ep-ab-10m-rate", [0])),
        timeout=15,
        what="the endpoint page's rate chart to draw both variants",
        interval=0.25,
    )
    latency = _chart_points(browser)["ep-ab-10m-latency"]
    assert len(latency) == 4 and all(n > 0 for n in latency)  # p50 and p99 of both variants
    instances = browser.execute_script("return document.querySelectorAll('tr[data-variant]').length")
    assert instances == 2
    _screenshot(browser, "console-endpoint.png")
    # the 3-hour window: per minute, from the metric store (the minute not flushed yet included)
    browser.execute_script(
        "[...document.querySelectorAll('.windows button')].find((b) => b.textContent === '3h').click()"
    )
    wait_until(
        lambda: all(n > 0 for n in _chart_points(browser).get("ep-ab-3h-rate", [0])),
        timeout=10,
        what="the 3-hour window's rate chart",
        interval=0.25,
    )
    assert browser.current_url.endswith("?window=3h")

    # the training job page: metric curves, and HTML in a hyperparameter or a log line stays text
    job = console["job"]
    browser.get(url + f"/console/training-jobs/{job}")
    wait_until(
        lambda: all(
            any(n > 1 for n in _chart_points(browser).get(f"tr-{job}-{m['Name']}", [])) for m in METRICS
        ),
        timeout=15,
        what="the training job's metric curves",
        interval=0.25,
    )
    shown = browser.execute_script(
        "return [...document.querySelectorAll('tr[data-hyperparameter=\"note\"] td')]"
        ".map((td) => td.textContent)"
    )
    assert shown == ["note", HOSTILE]
    assert HOSTILE in browser.execute_script("return document.querySelector('pre.log').textContent")
    assert browser.execute_script(
        "return window.__pwned === undefined"
        " && document.querySelectorAll('main img, main script').length === 0"
    )
    _screenshot(browser, "console-training-job.png")

    # the tuning job page: the objective of both trials and the best so far
    browser.get(url + "/console/tuning-jobs/console-tune")
    wait_until(
        lambda: _chart_points(browser).get("tu-console-tune") == [2, 2],
        timeout=15,
        what="the tuning job's objective chart",
        interval=0.25,
    )
    _screenshot(browser, "console-tuning-job.png")

    _no_js_errors(browser)
    assert load.count() > 0
