"""The built-in Model Monitor analyzer (training/monitoring/): statistics, suggested constraints and
violations in SageMaker's schemas, and the analyzer run over CSV files and captured JSON Lines."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from training.monitoring import statistics as st
from training.monitoring.analyzer import AnalyzerError, analyze

RNG = np.random.default_rng(11)


def _numbers(values: np.ndarray) -> list[str]:
    return [f"{x:.4f}" for x in values]


def test_types_statistics_and_constraints_follow_sagemakers_schema() -> None:
    columns = [
        ("f", _numbers(RNG.normal(size=300))),
        ("i", [str(v) for v in RNG.integers(0, 7, 300)]),
        ("s", [str(RNG.choice(["red", "green", "blue"])) for _ in range(300)]),
        ("gaps", ["1", ""] * 150),
        ("empty", [""] * 300),
    ]
    stats = st.dataset_statistics(columns, 300)
    assert stats["version"] == 0.0 and stats["dataset"] == {"item_count": 300}
    kinds = {f["name"]: f["inferred_type"] for f in stats["features"]}
    assert kinds == {
        "f": "Fractional",
        "i": "Integral",
        "s": "String",
        "gaps": "Integral",
        "empty": "Unknown",
    }
    f = stats["features"][0]["numerical_statistics"]
    values = np.array([float(v) for v in columns[0][1]])
    assert f["mean"] == pytest.approx(values.mean()) and f["sum"] == pytest.approx(values.sum())
    assert f["std_dev"] == pytest.approx(values.std()) and (f["min"], f["max"]) == (
        values.min(),
        values.max(),
    )
    buckets = f["distribution"]["kll"]["buckets"]
    assert len(buckets) == st.BUCKETS and sum(b["count"] for b in buckets) == pytest.approx(300)
    assert buckets[0]["lower_bound"] == values.min() and buckets[-1]["upper_bound"] == values.max()
    # 300 values fit in one KLL level: the sketch holds them all, exactly
    assert sorted(f["distribution"]["kll"]["sketch"]["data"][0]) == sorted(values.tolist())
    s = stats["features"][2]["string_statistics"]
    assert (
        s["distinct_count"] == 3.0
        and sum(b["count"] for b in s["distribution"]["categorical"]["buckets"]) == 300
    )
    assert stats["features"][3]["numerical_statistics"]["common"] == {"num_present": 150, "num_missing": 150}

    constraints = st.suggest_constraints(stats)
    by_name = {c["name"]: c for c in constraints["features"]}
    assert by_name["f"]["num_constraints"] == {"is_non_negative": False}
    assert by_name["i"]["num_constraints"] == {"is_non_negative": True}
    assert sorted(by_name["s"]["string_constraints"]["domains"]) == ["blue", "green", "red"]
    assert by_name["gaps"]["completeness"] == 0.5 and by_name["f"]["completeness"] == 1.0
    assert constraints["monitoring_config"]["distribution_constraints"] == {
        "perform_comparison": "Enabled",
        "comparison_threshold": 0.1,
        "comparison_method": "Robust",
        "categorical_comparison_threshold": 0.1,
        "categorical_drift_method": "LInfinity",
    }


def test_each_check_flags_only_what_changed() -> None:
    base_columns = [
        ("x", _numbers(RNG.normal(size=2000))),
        ("y", _numbers(RNG.normal(size=2000))),
        ("n", [str(v) for v in RNG.integers(0, 5, 2000)]),
        ("c", [str(RNG.choice(["a", "b"])) for _ in range(2000)]),
    ]
    stats = st.dataset_statistics(base_columns, 2000)
    constraints = st.suggest_constraints(stats)

    def checks(columns: st.Columns) -> list[tuple[str, str]]:
        return [
            (v["feature_name"], v["constraint_check_type"])
            for v in st.violations(columns, constraints, stats)
        ]

    same = [
        ("x", _numbers(RNG.normal(size=200))),
        ("y", _numbers(RNG.normal(size=200))),
        ("n", [str(v) for v in RNG.integers(0, 5, 200)]),
        ("c", [str(RNG.choice(["a", "b"])) for _ in range(200)]),
    ]
    assert checks(same) == []  # a sample of the same distributions: no drift (Robust)
    shifted = [("x", _numbers(RNG.normal(size=200) + 2.0)), *same[1:]]
    assert checks(shifted) == [("x", "baseline_drift_check")]
    categories = [*same[:3], ("c", ["a"] * 190 + ["b"] * 10)]
    assert checks(categories) == [("c", "baseline_drift_check")]
    typed = [*same[:2], ("n", [*same[2][1][:-1], "2.5"]), ("c", [*same[3][1][:-1], "zzz"])]
    assert checks(typed) == [("n", "data_type_check"), ("c", "categorical_values_check")]
    holes = [("x", [*same[0][1][:-20], *[""] * 20]), *same[1:]]
    assert checks(holes) == [("x", "completeness_check")]
    assert checks(same[:3]) == [("c", "missing_column_check")]
    assert checks([*same, ("_c4", ["1"] * 200)]) == [("_c4", "extra_column_check")]
    simple = {**constraints, "monitoring_config": json.loads(json.dumps(constraints["monitoring_config"]))}
    simple["monitoring_config"]["distribution_constraints"]["perform_comparison"] = "Disabled"
    assert st.violations(shifted, simple, stats) == []


def _capture_line(row: str, when: str, encoding: str = "CSV", output: str | None = None) -> str:
    data = base64.b64encode(row.encode()).decode() if encoding == "BASE64" else row
    capture: dict[str, object] = {
        "endpointInput": {
            "observedContentType": "text/csv",
            "mode": "INPUT",
            "data": data,
            "encoding": encoding,
        }
    }
    if output is not None:
        capture["endpointOutput"] = {
            "observedContentType": "text/csv",
            "mode": "OUTPUT",
            "data": output,
            "encoding": "CSV",
        }
    return json.dumps({"captureData": capture, "eventMetadata": {"eventId": "e", "inferenceTime": when}})


def test_the_analyzer_baselines_csv_then_checks_captured_records(tmp_path: Path) -> None:
    data = tmp_path / "baseline"
    data.mkdir()
    rows = RNG.normal(size=(300, 2))
    (data / "part-0.csv").write_text(
        "label,u,v\n" + "".join(f"{i % 2},{a:.3f},{b:.3f}\n" for i, (a, b) in enumerate(rows[:150]))
    )
    (data / "part-1.csv").write_text(
        "label,u,v\n" + "".join(f"{i % 2},{a:.3f},{b:.3f}\n" for i, (a, b) in enumerate(rows[150:]))
    )
    out = tmp_path / "baseline-out"
    env = {
        "dataset_format": json.dumps({"csv": {"header": True, "output_columns_position": "START"}}),
        "dataset_source": str(data),
        "output_path": str(out),
    }
    assert analyze(env) == "Completed: Job completed successfully with no violations."
    stats = json.loads((out / "statistics.json").read_text())
    assert stats["dataset"]["item_count"] == 300  # the second file's header is not a row
    assert [f["name"] for f in stats["features"]] == ["label", "u", "v"]

    captured = tmp_path / "capture" / "ep" / "AllTraffic" / "2026" / "12" / "08" / "10"
    captured.mkdir(parents=True)
    lines = [
        _capture_line(f"{a + 3:.3f},{b:.3f}", "2026-12-08T10:15:00Z", output=str(i % 2))
        for i, (a, b) in enumerate(RNG.normal(size=(100, 2)))
    ]
    lines.append(_capture_line("1.0,1.0\n2.0,2.0", "2026-12-08T09:59:59Z", encoding="BASE64"))  # outside
    (captured / "00-00-000-x.jsonl").write_text("\n".join(lines) + "\n")
    report = tmp_path / "report"
    message = analyze(
        {
            "dataset_format": json.dumps({"sagemakerCaptureJson": {"captureIndexNames": ["endpointInput"]}}),
            "dataset_source": str(tmp_path / "capture"),
            "output_path": str(report),
            "baseline_constraints": str(out / "constraints.json"),
            "baseline_statistics": str(out / "statistics.json"),
            "start_time": "2026-12-08T10:00:00Z",
            "end_time": "2026-12-08T11:00:00Z",
        }
    )
    assert message == "CompletedWithViolations: Job completed successfully with 1 violations."
    violations = json.loads((report / "constraint_violations.json").read_text())["violations"]
    # the captured output (START) joined the input: the features line up with the baseline's by position
    assert [(v["feature_name"], v["constraint_check_type"]) for v in violations] == [
        ("u", "baseline_drift_check")
    ]
    assert json.loads((report / "statistics.json").read_text())["dataset"]["item_count"] == 100

    with pytest.raises(AnalyzerError, match="Job inputs had no data"):
        analyze(
            {
                **env,
                "dataset_source": str(tmp_path / "capture"),
                "start_time": "2027-01-01T00:00:00Z",
                "dataset_format": json.dumps({"sagemakerCaptureJson": {}}),
            }
        )
    with pytest.raises(AnalyzerError, match="not supported"):
        analyze({**env, "dataset_format": json.dumps({"parquet": {}})})
