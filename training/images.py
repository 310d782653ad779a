"""Which way a training image runs: script mode, a built-in algorithm, or a foreign container."""

from __future__ import annotations

from typing import Literal

ImageKind = Literal[
    "script", "xgboost", "linear-learner", "kmeans", "pca", "factorization-machines", "container"
]

_BUILTINS: dict[str, ImageKind] = {
    "selfmaker": "script",
    "xgboost": "xgboost",
    "sagemaker-xgboost": "xgboost",
    "linear-learner": "linear-learner",
    "kmeans": "kmeans",
    "pca": "pca",
    "factorization-machines": "factorization-machines",
}


def image_repository(uri: str) -> str:
    """The last path component of an image URI without registry, tag or digest.

    ``683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1`` → ``sagemaker-xgboost``;
    ``localhost:5000/team/selfmaker@sha256:…`` → ``selfmaker``.
    """
    name = uri.strip()
    name = name.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    # a ':' in the last component is the tag (a registry port can only appear before a '/')
    return last.split(":", 1)[0].lower()


def classify_image(uri: str | None) -> ImageKind:
    """How a TrainingImage runs here.

    Empty/None → selfmaker's own image (script mode); repository ``selfmaker`` → script mode;
    ``xgboost`` / ``sagemaker-xgboost`` → built-in xgboost; ``linear-learner`` → built-in linear
    learner; ``kmeans`` / ``pca`` / ``factorization-machines`` → those built-ins (any registry prefix
    and tag); anything else → ``container``.
    """
    if not uri or not uri.strip():
        return "script"
    return _BUILTINS.get(image_repository(uri), "container")
