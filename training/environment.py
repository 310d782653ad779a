"""The ``/opt/ml`` tree as the training code sees it, and the ``SM_*`` environment of sagemaker-training.

:class:`TrainingEnvironment` reads the three config files once; :meth:`TrainingEnvironment.sm_env` returns
the variables the sagemaker-training toolkit (5.x) sets, so a script written for that toolkit runs
unchanged.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.errors import UserError

DEFAULT_ROOT = "/opt/ml"
#: environment variable naming a pip wheel to run pip from when the interpreter has no pip module (the image
#: sets it: its venv has no pip, but requirements.txt must install)
PIP_WHEEL_ENV = "SELFMAKER_PIP_WHEEL"
#: hyperparameters consumed by the toolkit, not passed to the user script
TOOLKIT_KEYS = {
    "sagemaker_program",
    "sagemaker_submit_directory",
    "sagemaker_region",
    "sagemaker_container_log_level",
    "sagemaker_job_name",
    "sagemaker_enable_cloudwatch_metrics",
    "sagemaker_s3_output",
    "default_user_module_name",
    "_tuning_objective_metric",
}


def say(line: str) -> None:
    """One line of the job's log: stdout is the contract (CloudWatch's log stream, the ``#quality_metric``
    lines that metric definitions match), flushed at once so a crash loses nothing."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def decode_hyperparameter(value: Any) -> Any:
    """``json.loads`` a hyperparameter string when possible (``"10"`` → 10, ``"\\"abc\\""`` → abc), else
    keep it."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _read_json(path: Path, default: Any) -> Any:
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8") or "null") or default
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON: {exc}") from exc


#: set (to "1") by the runner for a job with ``EnableNetworkIsolation``: the user's script runs without a
#: network (script mode: its own network namespace; containers: ``--network none``)
NETWORK_ISOLATION_ENV = "SELFMAKER_NETWORK_ISOLATION"


@dataclass
class TrainingEnvironment:
    """Paths and configuration of one training host, read from an ``/opt/ml``-shaped tree."""

    root: Path
    raw_hyperparameters: dict[str, str] = field(default_factory=dict)
    input_data_config: dict[str, dict[str, Any]] = field(default_factory=dict)
    resource_config: dict[str, Any] = field(default_factory=dict)
    checkpoint_config: dict[str, Any] = field(default_factory=dict)
    #: pip wheel for ``requirements.txt`` installs when this interpreter has no pip (``$SELFMAKER_PIP_WHEEL``)
    pip_wheel: str | None = None

    @classmethod
    def load(cls, root: str | Path | None = None) -> TrainingEnvironment:
        """Read ``<root>/input/config/*.json``; root defaults to ``$SELFMAKER_ML_ROOT`` or ``/opt/ml``.

        ``pip_wheel`` comes from ``$SELFMAKER_PIP_WHEEL`` (empty means unset).
        """
        base = Path(root or os.environ.get("SELFMAKER_ML_ROOT") or DEFAULT_ROOT)
        cfg = base / "input" / "config"
        hps = _read_json(cfg / "hyperparameters.json", {})
        if not isinstance(hps, dict):
            raise UserError(f"{cfg / 'hyperparameters.json'}: must be a JSON object")
        env = cls(
            root=base,
            raw_hyperparameters={str(k): v if isinstance(v, str) else json.dumps(v) for k, v in hps.items()},
            input_data_config=_read_json(cfg / "inputdataconfig.json", {}),
            resource_config=_read_json(cfg / "resourceconfig.json", {}),
            checkpoint_config=_read_json(cfg / "checkpointconfig.json", {}),
            pip_wheel=os.environ.get(PIP_WHEEL_ENV) or None,
        )
        for sub in (env.model_dir, env.output_data_dir, env.output_intermediate_dir):
            sub.mkdir(parents=True, exist_ok=True)
        return env

    # -- paths ----------------------------------------------------------------------------------
    @property
    def input_dir(self) -> Path:
        return self.root / "input"

    @property
    def input_config_dir(self) -> Path:
        return self.root / "input" / "config"

    @property
    def data_dir(self) -> Path:
        return self.root / "input" / "data"

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def output_dir(self) -> Path:
        return self.root / "output"

    @property
    def output_data_dir(self) -> Path:
        return self.root / "output" / "data"

    @property
    def output_intermediate_dir(self) -> Path:
        return self.root / "output" / "intermediate"

    @property
    def checkpoint_dir(self) -> Path:
        """CheckpointConfig.LocalPath (``/opt/ml/…`` read inside this tree, another absolute path as it is:
        a local process is given its host path, a container its mount), default ``<root>/checkpoints``."""
        local = str(self.checkpoint_config.get("LocalPath") or "")
        if local.startswith("/opt/ml/"):
            return self.root / local[len("/opt/ml/") :]
        return Path(local) if local.startswith("/") else self.root / "checkpoints"

    @property
    def code_dir(self) -> Path:
        return self.root / "code"

    @property
    def failure_file(self) -> Path:
        return self.root / "output" / "failure"

    def channel_dir(self, name: str) -> Path:
        """``input/data/<name>`` (File/FastFile mode)."""
        return self.data_dir / name

    def pipe_path(self, name: str, epoch: int) -> Path:
        """``input/data/<name>_<epoch>`` (Pipe mode FIFO)."""
        return self.data_dir / f"{name}_{epoch}"

    # -- configuration --------------------------------------------------------------------------
    @property
    def hyperparameters(self) -> dict[str, Any]:
        """All hyperparameters, JSON-decoded where possible."""
        return {k: decode_hyperparameter(v) for k, v in self.raw_hyperparameters.items()}

    @property
    def user_hyperparameters(self) -> dict[str, Any]:
        """Hyperparameters without the toolkit's ``sagemaker_*`` keys."""
        return {
            k: v
            for k, v in self.hyperparameters.items()
            if k not in TOOLKIT_KEYS and not k.startswith("sagemaker_")
        }

    @property
    def framework_params(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in self.hyperparameters.items()
            if k.startswith("sagemaker_") and k not in TOOLKIT_KEYS
        }

    @property
    def channels(self) -> list[str]:
        return sorted(self.input_data_config)

    def input_mode(self, channel: str) -> str:
        return str((self.input_data_config.get(channel) or {}).get("TrainingInputMode") or "File")

    def content_type(self, channel: str) -> str | None:
        value = (self.input_data_config.get(channel) or {}).get("ContentType")
        return str(value) if value else None

    @property
    def hosts(self) -> list[str]:
        return list(self.resource_config.get("hosts") or ["algo-1"])

    @property
    def current_host(self) -> str:
        return str(self.resource_config.get("current_host") or "algo-1")

    @property
    def master_hostname(self) -> str:
        return sorted(self.hosts)[0]

    @property
    def is_master(self) -> bool:
        return self.current_host == self.master_hostname

    @property
    def job_name(self) -> str:
        return os.environ.get("TRAINING_JOB_NAME") or str(
            self.hyperparameters.get("sagemaker_job_name") or "local-job"
        )

    def host_address(self, host: str) -> str:
        """How this host reaches ``host``: ``SELFMAKER_HOST_ADDRESSES`` (JSON map) or the name itself."""
        try:
            mapping = json.loads(os.environ.get("SELFMAKER_HOST_ADDRESSES") or "{}")
        except ValueError:
            mapping = {}
        return str(mapping.get(host) or host)

    def num_cpus(self) -> int:
        return os.cpu_count() or 1

    def num_gpus(self) -> int:
        from shutil import which

        if not which("nvidia-smi"):
            return 0
        import subprocess

        try:
            out = subprocess.run(
                ["nvidia-smi", "--list-gpus"], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return 0
        return len([line for line in out.stdout.splitlines() if line.strip()])

    # -- SM_* -----------------------------------------------------------------------------------
    def training_env(
        self,
        *,
        module_name: str = "",
        user_entry_point: str = "",
        module_dir: str = "",
        user_args: list[str] | None = None,
    ) -> dict[str, Any]:
        """The dict the toolkit exports as ``SM_TRAINING_ENV``."""
        groups = self.resource_config.get("instance_groups") or [
            {
                "instance_group_name": "homogeneousCluster",
                "instance_type": self.resource_config.get("current_instance_type", "local"),
                "hosts": self.hosts,
            }
        ]
        return {
            "additional_framework_parameters": self.framework_params,
            "channel_input_dirs": {c: str(self.channel_dir(c)) for c in self.channels},
            "current_host": self.current_host,
            "current_instance_type": self.resource_config.get("current_instance_type", "local"),
            "current_instance_group": self.resource_config.get("current_group_name", "homogeneousCluster"),
            "current_instance_group_hosts": self.hosts,
            "distribution_hosts": self.hosts,
            "distribution_instance_groups": [g.get("instance_group_name") for g in groups],
            "framework_module": None,
            "hosts": self.hosts,
            "hyperparameters": self.user_hyperparameters,
            "input_config_dir": str(self.input_config_dir),
            "input_data_config": self.input_data_config,
            "input_dir": str(self.input_dir),
            "instance_groups": [g.get("instance_group_name") for g in groups],
            "instance_groups_dict": {g.get("instance_group_name"): g for g in groups},
            "is_hetero": False,
            "is_master": self.is_master,
            "is_modelparallel_enabled": None,
            "is_smddpmprun_installed": False,
            "job_name": self.job_name,
            "log_level": 20,
            "master_hostname": self.master_hostname,
            "model_dir": str(self.model_dir),
            "module_dir": module_dir,
            "module_name": module_name,
            "network_interface_name": self.resource_config.get("network_interface_name", "eth0"),
            "num_cpus": self.num_cpus(),
            "num_gpus": self.num_gpus(),
            "num_neurons": 0,
            "output_data_dir": str(self.output_data_dir),
            "output_dir": str(self.output_dir),
            "output_intermediate_dir": str(self.output_intermediate_dir),
            "resource_config": self.resource_config,
            "user_entry_point": user_entry_point,
        } | ({"user_args": user_args} if user_args is not None else {})

    def sm_env(self, **kwargs: Any) -> dict[str, str]:
        """The ``SM_*`` variables (non-strings JSON-encoded) plus ``SAGEMAKER_JOB_NAME`` /
        ``CURRENT_HOST``."""
        te = self.training_env(**kwargs)

        def enc(v: Any) -> str:
            return v if isinstance(v, str) else json.dumps(v)

        env: dict[str, str] = {
            "SM_MODEL_DIR": te["model_dir"],
            "SM_INPUT_DIR": te["input_dir"],
            "SM_INPUT_CONFIG_DIR": te["input_config_dir"],
            "SM_OUTPUT_DIR": te["output_dir"],
            "SM_OUTPUT_DATA_DIR": te["output_data_dir"],
            "SM_OUTPUT_INTERMEDIATE_DIR": te["output_intermediate_dir"],
            "SM_CHANNELS": json.dumps(self.channels),
            "SM_HPS": json.dumps(te["hyperparameters"]),
            "SM_HOSTS": json.dumps(self.hosts),
            "SM_CURRENT_HOST": self.current_host,
            "SM_NETWORK_INTERFACE_NAME": te["network_interface_name"],
            "SM_NUM_CPUS": str(te["num_cpus"]),
            "SM_NUM_GPUS": str(te["num_gpus"]),
            "SM_NUM_NEURONS": "0",
            "SM_USER_ENTRY_POINT": te["user_entry_point"],
            "SM_MODULE_NAME": te["module_name"],
            "SM_MODULE_DIR": te["module_dir"],
            "SM_FRAMEWORK_MODULE": "",
            "SM_FRAMEWORK_PARAMS": json.dumps(te["additional_framework_parameters"]),
            "SM_LOG_LEVEL": "20",
            "SM_RESOURCE_CONFIG": json.dumps(self.resource_config),
            "SM_INPUT_DATA_CONFIG": json.dumps(self.input_data_config),
            "SM_TRAINING_ENV": json.dumps(te),
            "SM_CURRENT_INSTANCE_TYPE": str(te["current_instance_type"]),
            "SM_CURRENT_INSTANCE_GROUP": str(te["current_instance_group"]),
            "SM_CURRENT_INSTANCE_GROUP_HOSTS": json.dumps(te["current_instance_group_hosts"]),
            "SM_INSTANCE_GROUPS": json.dumps(te["instance_groups"]),
            "SM_INSTANCE_GROUPS_DICT": json.dumps(te["instance_groups_dict"]),
            "SM_DISTRIBUTION_INSTANCE_GROUPS": json.dumps(te["distribution_instance_groups"]),
            "SM_IS_HETERO": "false",
            "SM_MASTER_HOSTNAME": self.master_hostname,
            "SM_IS_MASTER": json.dumps(self.is_master),
            "SAGEMAKER_JOB_NAME": self.job_name,
            "CURRENT_HOST": self.current_host,
        }
        if "user_args" in te:
            env["SM_USER_ARGS"] = json.dumps(te["user_args"])
        region = (
            os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or self.hyperparameters.get("sagemaker_region")
        )
        if region:
            env["SAGEMAKER_REGION"] = str(region)
        for channel in self.channels:
            env[f"SM_CHANNEL_{channel.upper()}"] = str(self.channel_dir(channel))
        for name, value in te["hyperparameters"].items():
            env[f"SM_HP_{name.upper()}"] = enc(value)
        return env
