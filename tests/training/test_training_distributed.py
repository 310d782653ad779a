"""Several hosts: resourceconfig per host, ShardedByS3Key, xgboost over its collective."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from training_helpers import (
    XGB_IMAGE,
    binary_data,
    channel,
    local_model,
    onnx_predict,
    request,
    run_job,
    write_csv,
)


def test_distributed_xgboost_on_two_hosts_matches_one_host(tmp_path: Path) -> None:
    X, y = binary_data(3000, seed=7)
    Xt, yt, Xv, yv = X[:2400], y[:2400], X[2400:], y[2400:]
    write_csv(tmp_path / "data/part-a.csv", Xt[:1200], yt[:1200])
    write_csv(tmp_path / "data/part-b.csv", Xt[1200:], yt[1200:])
    write_csv(tmp_path / "val/v.csv", Xv, yv)
    hps = {
        "num_round": 20,
        "objective": "binary:logistic",
        "max_depth": 4,
        "tree_method": "hist",
        "eval_metric": "error",
    }
    channels = [
        channel("train", (tmp_path / "data").as_uri(), distribution="ShardedByS3Key"),
        channel("validation", (tmp_path / "val").as_uri()),
    ]
    two, lines = run_job(
        request("xgb-2hosts", XGB_IMAGE, hps, channels, (tmp_path / "out").as_uri(), count=2),
        tmp_path / "job2",
    )
    assert two.status == "Completed", two.failure_reason
    for host, part in (("algo-1", "part-a.csv"), ("algo-2", "part-b.csv")):
        root = tmp_path / "job2/hosts" / host
        assert [p.name for p in (root / "input/data/train").iterdir()] == [part]
        rc = json.loads((root / "input/config/resourceconfig.json").read_text())
        assert rc["current_host"] == host and rc["hosts"] == ["algo-1", "algo-2"]
    assert any(line.startswith("algo-2 | Distributed training: algo-2 of 2 hosts") for line in lines)
    # both hosts see the same (allreduced) evaluation, so they print identical metric lines
    last = {
        h: [line.split(" | ", 1)[1] for line in lines if line.startswith(h) and "[19]#011" in line]
        for h in ("algo-1", "algo-2")
    }
    assert last["algo-1"] == last["algo-2"] != []

    # single-host reference: the same parameters on all the training data, in this process
    import xgboost as xgb

    params = {"objective": "binary:logistic", "max_depth": 4, "tree_method": "hist", "nthread": 1}
    single = xgb.train(params, xgb.DMatrix(Xt, label=yt), num_boost_round=20)
    acc_one = float(np.mean((single.predict(xgb.DMatrix(Xv)) >= 0.5) == yv))
    model_dir = local_model(two, tmp_path / "m-two")
    acc_two = float(np.mean(onnx_predict(model_dir, Xv)["label"] == yv))
    assert acc_one > 0.93 and acc_two > 0.93
    assert abs(acc_two - acc_one) <= 0.02, (acc_one, acc_two)
    # the ONNX graph is the distributed booster itself, missing values included
    probe = Xv.copy()
    probe[::3, 1] = np.nan
    two_hosts = xgb.Booster()
    two_hosts.load_model(
        bytearray((model_dir / "xgboost-model").read_bytes())
    )  # UBJSON without a file extension
    np.testing.assert_allclose(
        onnx_predict(model_dir, probe)["probabilities"][:, 1],
        two_hosts.predict(xgb.DMatrix(probe, missing=np.nan)),
        atol=1e-5,
        rtol=1e-5,
    )
