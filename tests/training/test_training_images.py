"""Which training images run as script mode, a built-in, or a container."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from training.images import classify_image, image_repository


@pytest.mark.parametrize(
    ("uri", "kind"),
    [
        ("683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1", "xgboost"),
        ("xgboost", "xgboost"),
        ("registry.example:5000/ml/xgboost@sha256:abcd", "xgboost"),
        ("382416733822.dkr.ecr.us-east-1.amazonaws.com/linear-learner:1", "linear-learner"),
        ("linear-learner:latest", "linear-learner"),
        ("selfmaker", "script"),
        ("localhost:5000/selfmaker:0.1.0", "script"),
        ("", "script"),
        (None, "script"),
        ("763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.1-cpu-py310", "container"),
        ("localhost:5000/xgboost-custom:1", "container"),
        ("myxgboost", "container"),
    ],
)
def test_classify_image(uri: str | None, kind: str) -> None:
    assert classify_image(uri) == kind


def test_registry_port_is_not_a_tag() -> None:
    assert image_repository("localhost:5000/selfmaker") == "selfmaker"


@given(
    registry=st.sampled_from(
        ["", "localhost:5000/", "123456789012.dkr.ecr.eu-west-1.amazonaws.com/", "quay.io/team/"]
    ),
    repo=st.sampled_from(["xgboost", "sagemaker-xgboost", "linear-learner", "selfmaker", "other", "sklearn"]),
    tag=st.sampled_from(["", ":1", ":1.7-1", ":latest", "@sha256:0123abcd"]),
)
def test_prefix_and_tag_never_change_the_kind(registry: str, repo: str, tag: str) -> None:
    assert classify_image(registry + repo + tag) == classify_image(repo)
