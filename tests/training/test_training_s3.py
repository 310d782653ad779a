"""Channels, submit directory, checkpoints and outputs on S3 (moto's server on 127.0.0.1)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import boto3
from training_helpers import SELFMAKER_IMAGE, channel, request, run_job, tar_gz

SCRIPT = """
import os, json
train = os.environ["SM_CHANNEL_TRAIN"]
listing = {}
for ch in ("train", "validation"):
    base = os.environ["SM_CHANNEL_" + ch.upper()]
    for dirpath, _, files in os.walk(base):
        for name in files:
            path = os.path.join(dirpath, name)
            listing[ch + "/" + os.path.relpath(path, base)] = open(path).read()
ckpt_dir = "/opt/ml/checkpoints"
if not os.path.isdir(ckpt_dir):
    ckpt_dir = os.path.join(os.path.dirname(os.environ["SM_MODEL_DIR"]), "checkpoints")
restored = sorted(os.listdir(ckpt_dir))
with open(os.path.join(ckpt_dir, "step-2.ckpt"), "w") as f:
    f.write("two")
os.remove(os.path.join(ckpt_dir, "stale.ckpt"))
with open(os.path.join(os.environ["SM_MODEL_DIR"], "model.json"), "w") as f:
    json.dump({"listing": listing, "restored": restored}, f)
with open(os.path.join(os.environ["SM_OUTPUT_DATA_DIR"], "extra.txt"), "w") as f:
    f.write("output data")
"""


def test_s3_channels_checkpoints_and_outputs(tmp_path: Path, moto_server: str) -> None:
    s3 = boto3.client("s3", endpoint_url=moto_server)
    s3.create_bucket(Bucket="training-tests")
    s3.put_object(Bucket="training-tests", Key="data/train/part-1.csv", Body=b"1,2\n")
    s3.put_object(Bucket="training-tests", Key="data/train/sub/part-2.csv", Body=b"3,4\n")
    s3.put_object(
        Bucket="training-tests", Key="data/train-other/x.csv", Body=b"not mine\n"
    )  # shares the prefix text, not the folder
    s3.put_object(Bucket="training-tests", Key="val/a.csv", Body=b"5,6\n")
    s3.put_object(Bucket="training-tests", Key="val/b.csv", Body=b"7,8\n")
    s3.put_object(
        Bucket="training-tests",
        Key="manifests/val.manifest",
        Body=json.dumps([{"prefix": "s3://training-tests/val/"}, "b.csv"]).encode(),
    )
    s3.put_object(Bucket="training-tests", Key="code/sourcedir.tar.gz", Body=tar_gz({"train.py": SCRIPT}))
    s3.put_object(Bucket="training-tests", Key="ckpt/step-1.ckpt", Body=b"one")
    s3.put_object(Bucket="training-tests", Key="ckpt/stale.ckpt", Body=b"old")

    req = request(
        "s3-job",
        SELFMAKER_IMAGE,
        {
            "sagemaker_program": '"train.py"',
            "sagemaker_submit_directory": '"s3://training-tests/code/sourcedir.tar.gz"',
        },
        [
            channel("train", "s3://training-tests/data/train/"),
            channel("validation", "s3://training-tests/manifests/val.manifest", data_type="ManifestFile"),
        ],
        "s3://training-tests/output",
        checkpoint="s3://training-tests/ckpt",
    )
    state, _ = run_job(req, tmp_path / "job", s3_endpoint_url=moto_server, checkpoint_sync_interval=0.2)
    assert state.status == "Completed", state.failure_reason
    assert state.model_artifacts == "s3://training-tests/output/s3-job/output/model.tar.gz"

    body = s3.get_object(Bucket="training-tests", Key="output/s3-job/output/model.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        model = json.loads(tar.extractfile("model.json").read())  # type: ignore[union-attr]
    assert model["listing"] == {
        "train/part-1.csv": "1,2\n",
        "train/sub/part-2.csv": "3,4\n",
        "validation/b.csv": "7,8\n",
    }
    assert model["restored"] == ["stale.ckpt", "step-1.ckpt"]
    body = s3.get_object(Bucket="training-tests", Key="output/s3-job/output/output.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        assert tar.extractfile("extra.txt").read() == b"output data"  # type: ignore[union-attr]
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="training-tests", Prefix="ckpt/")["Contents"])
    assert keys == ["ckpt/step-1.ckpt", "ckpt/step-2.ckpt"]  # new file uploaded, local delete mirrored


def test_missing_bucket_fails_with_a_reason(tmp_path: Path, moto_server: str) -> None:
    req = request(
        "s3-missing",
        SELFMAKER_IMAGE,
        {"sagemaker_program": '"train.py"'},
        [channel("train", "s3://no-such-bucket/data/")],
        "s3://no-such-bucket/out",
    )
    state, _ = run_job(req, tmp_path / "job", s3_endpoint_url=moto_server)
    assert state.status == "Failed"
    assert "s3://no-such-bucket/data/" in (state.failure_reason or "")
