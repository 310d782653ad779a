"""SageMaker's own XGBoost artifacts: a model directory holding ``xgboost-model`` and no ``model.onnx``.

People who move from SageMaker bring what its built-in XGBoost wrote: ``xgboost-model`` in the legacy
binary format (the 1.x images), JSON or UBJSON (newer ones), or a pickled ``Booster`` (the 0.90 images).
At load the booster is read with xgboost itself and written as ``model.onnx`` + ``signature.json`` by the
same exporter the built-in XGBoost's training uses (:func:`common.onnx_export.export_xgboost`, which also
checks that ONNX Runtime predicts what xgboost predicts); from then on the model is served like one this
platform trained: every request and response format of the ``xgboost`` response format.

Needs the ``xgboost`` and ``onnx`` packages (the image has both; ``pip install 'selfmaker[training]'``
otherwise). A booster the exporter cannot express (``gblinear``, ``dart``, an objective without an ONNX
link) fails the load with the reason; a model server never guesses.
"""

from __future__ import annotations

import json
import logging
import pickle
import time
import warnings
from pathlib import Path
from typing import Any

from serving.errors import ModelLoadError

log = logging.getLogger(__name__)

#: the file name SageMaker's XGBoost containers save the booster under
NATIVE_XGBOOST = "xgboost-model"
_PICKLE = b"\x80"


def artifact_format(data: bytes) -> str:
    """The save format of an ``xgboost-model`` file: ``pickle``, ``json``, ``ubjson`` or ``binary``."""
    if data[:1] == _PICKLE:
        return "pickle"
    text = data.lstrip()
    if text[:1] == b"{" and text[1:].lstrip()[:1] in (b'"', b"}"):  # JSON's first key is a quoted string
        return "json"
    if data[:1] == b"{":  # UBJSON's first key is typed: {L..., {i..., {U...
        return "ubjson"
    return "binary"


def load_booster(data: bytes) -> Any:
    """An ``xgboost.Booster`` from the bytes of an ``xgboost-model`` file (any format of
    :func:`artifact_format`); ModelLoadError naming the fault otherwise."""
    # imported here: only models that carry a native booster need xgboost (a serving-only install may lack it)
    try:
        import xgboost as xgb
    except ImportError as exc:
        raise ModelLoadError(
            f"{NATIVE_XGBOOST}: serving SageMaker's XGBoost artifacts needs the xgboost package "
            "(pip install 'selfmaker[training]')"
        ) from exc
    kind = artifact_format(data)
    try:
        if kind == "pickle":
            # a trusted artifact, as the model's own code/inference.py is: SageMaker's 0.90 images pickled
            # the Booster (or a scikit-learn wrapper holding one)
            obj = pickle.loads(data)  # noqa: S301
            booster = obj.get_booster() if hasattr(obj, "get_booster") else obj
            if not isinstance(booster, xgb.Booster):
                raise ModelLoadError(
                    f"{NATIVE_XGBOOST} is a pickle of {type(obj).__name__}, not of an xgboost Booster"
                )
            return booster
        booster = xgb.Booster()
        # xgboost warns that the legacy binary format is deprecated: that is what SageMaker wrote, so the
        # warning goes to the log rather than to the caller (at start-up, one thread)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            booster.load_model(bytearray(data))
        for warning in caught:
            log.info("xgboost: %s", str(warning.message).strip().splitlines()[0])
        return booster
    except ModelLoadError:
        raise
    except Exception as exc:  # xgboost's XGBoostError, pickle's errors: a corrupt or foreign file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"{NATIVE_XGBOOST} ({kind} format, {len(data)} bytes) is not a model xgboost can read: {first}"
        ) from exc


def convert_native_model(model_dir: Path) -> bool:
    """Write ``model.onnx`` + ``signature.json`` for a directory that has SageMaker's ``xgboost-model`` and
    no ``model.onnx``; False when there is nothing to convert."""
    path = model_dir / NATIVE_XGBOOST
    if (model_dir / "model.onnx").exists() or not path.is_file():
        return False
    started = time.perf_counter()
    data = path.read_bytes()
    booster = load_booster(data)
    learner = json.loads(booster.save_config())["learner"]
    objective = learner["objective"]["name"]
    num_class = int(float(learner["learner_model_param"].get("num_class") or 0))
    try:
        # imported here: the exporter needs the onnx package, which only this path uses
        from common.onnx_export import export_xgboost

        export_xgboost(
            booster,
            model_dir,
            n_features=int(booster.num_features()),
            objective=objective,
            num_class=num_class,
        )
    except ImportError as exc:
        raise ModelLoadError(
            f"{NATIVE_XGBOOST}: converting it needs the onnx package (pip install 'selfmaker[training]')"
        ) from exc
    except (ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{NATIVE_XGBOOST} cannot be served: {exc}") from exc
    except OSError as exc:
        raise ModelLoadError(f"{NATIVE_XGBOOST}: cannot write model.onnx next to it: {exc}") from exc
    log.info(
        "converted SageMaker's %s (%s, objective %s, %d features) to model.onnx in %.2f s",
        NATIVE_XGBOOST,
        artifact_format(data),
        objective,
        booster.num_features(),
        time.perf_counter() - started,
    )
    return True
