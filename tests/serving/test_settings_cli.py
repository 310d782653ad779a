"""Settings (SageMaker environment names) and the ``selfmaker serve`` command line."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError
from serving_helpers import ROOT

from serving.cli import main
from serving.settings import ServingSettings


def test_sagemaker_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGEMAKER_BIND_TO_PORT", "9123")
    monkeypatch.setenv("SAGEMAKER_MODEL_SERVER_WORKERS", "3")
    monkeypatch.setenv("SAGEMAKER_MODEL_SERVER_TIMEOUT", "17")
    monkeypatch.setenv("SAGEMAKER_MAX_PAYLOAD_IN_MB", "1024")
    monkeypatch.setenv("SAGEMAKER_PROGRAM", "serve.py")
    settings = ServingSettings()
    assert (settings.port, settings.workers, settings.timeout, settings.max_payload_mb, settings.program) == (
        9123,
        3,
        17,
        1024,
        "serve.py",
    )
    assert settings.max_payload_bytes() == 1024 * 1024 * 1024


def test_endpoint_and_variant_names_behind_the_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (ServingSettings().endpoint_name, ServingSettings().variant_name) == (None, "AllTraffic")
    monkeypatch.setenv("SELFMAKER_ENDPOINT_NAME", "churn")
    monkeypatch.setenv("SELFMAKER_VARIANT_NAME", "challenger-2")
    settings = ServingSettings()
    assert (settings.endpoint_name, settings.variant_name) == ("churn", "challenger-2")


def test_defaults_and_derived_values() -> None:
    settings = ServingSettings()
    assert settings.port == 8080 and settings.max_payload_mb == 6
    assert settings.effective_workers() == settings.cores()
    assert settings.effective_workers() * settings.effective_ort_threads() == settings.cores()
    one = ServingSettings(workers=1)
    assert one.effective_ort_threads() == one.cores()
    assert (
        ServingSettings(workers=1, max_concurrent_transforms=None).effective_max_concurrent_transforms() == 1
    )


@pytest.mark.parametrize(("inside", "host"), [(True, "0.0.0.0"), (False, "127.0.0.1")])
def test_host_depends_on_container(inside: bool, host: str) -> None:
    assert ServingSettings(in_container=inside).effective_host() == host
    assert ServingSettings(in_container=inside, host="::1").effective_host() == "::1"


@pytest.mark.parametrize(
    "env",
    [
        {"SAGEMAKER_MAX_PAYLOAD_IN_MB": "2048"},
        {"SAGEMAKER_MAX_PAYLOAD_IN_MB": "0"},
        {"SAGEMAKER_BIND_TO_PORT": "not-a-port"},
        {"SAGEMAKER_MODEL_SERVER_WORKERS": "0"},
        {"SELFMAKER_ENDPOINT_NAME": "churn/v2"},
        {"SELFMAKER_VARIANT_NAME": "-champion"},
    ],
)
def test_invalid_settings_are_refused(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError):
        ServingSettings()
    assert main(["--model-dir", "/nonexistent"]) == 2


def test_cli_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--model-dir", "a", "--model-data", "b"])
    assert info.value.code == 2
    assert main(["--port", "70000"]) == 2
    assert main(["--workers", "0"]) == 2
    assert "must be" in capsys.readouterr().out


def test_selfmaker_serve_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "selfmaker.cli", "serve", "--help"],
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0
    assert "--model-data" in out.stdout and "--model-dir" in out.stdout
