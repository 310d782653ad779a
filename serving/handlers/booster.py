"""The defaults of SageMaker's XGBoost framework mode: what a script written for SageMaker's XGBoost image
gets when it defines only some of the hooks.

Such a script usually defines ``model_fn`` alone (returning an ``xgboost.Booster``, often unpickled from
``xgboost-model``) and relies on the image for the rest:

* ``model_fn`` (none defined): the booster in ``xgboost-model``, in any format SageMaker's XGBoost versions
  write (:func:`serving.native.load_booster`);
* ``input_fn``: the body as an ``xgboost.DMatrix`` — CSV, libsvm (``text/libsvm``, ``text/x-libsvm``),
  RecordIO-protobuf, and also JSON, JSON Lines and NPY — with missing values as NaN and the rows as wide as
  the booster's features;
* ``predict_fn``: ``booster.predict(dmatrix, validate_features=False)`` (a scikit-learn wrapper's
  ``predict`` on the array instead);
* ``output_fn``: the hooks handler's default (JSON list, one value or row per CSV line, JSON Lines, NPY).

They apply whenever the model is an xgboost one, whichever image serves it. xgboost is imported only then.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from serving import codecs, contract
from serving.errors import BadRequestError, ModelLoadError
from serving.native import NATIVE_XGBOOST, load_booster


def has_native_model(model_dir: Path) -> bool:
    """True when ``model_dir`` holds SageMaker's ``xgboost-model`` and no ``model.onnx``: the default
    ``model_fn`` then loads the booster (as SageMaker's XGBoost image does) rather than ONNX."""
    return (model_dir / NATIVE_XGBOOST).is_file() and not (model_dir / contract.MODEL_FILE).exists()


def load_model(model_dir: Path) -> Any:
    """The default ``model_fn`` of the XGBoost framework image: the booster in ``xgboost-model``."""
    path = model_dir / NATIVE_XGBOOST
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{NATIVE_XGBOOST}: cannot read it: {exc}") from exc
    return load_booster(data)


def is_xgboost_model(model: Any) -> bool:
    """An ``xgboost.Booster`` or one of xgboost's scikit-learn wrappers (checked by module, so that models
    of other libraries never import xgboost)."""
    return type(model).__module__.split(".", 1)[0] == "xgboost"


def _is_booster(model: Any) -> bool:
    return type(model).__name__ == "Booster" and is_xgboost_model(model)


def _width(model: Any) -> int | None:
    """The model's feature count (None when it does not say: the body decides the width)."""
    if _is_booster(model):
        booster = model
    else:
        try:
            booster = model.get_booster()
        except (AttributeError, ValueError):  # no booster, or a wrapper never fitted (NotFittedError)
            return None
    return int(booster.num_features()) or None


def decode(input_data: bytes, content_type: str, model: Any) -> Any:
    """The default ``input_fn``: a DMatrix for a booster, a float32 array (NaN = missing) for a wrapper."""
    ctype = contract.normalise_content_type(content_type) or contract.CSV
    width = _width(model)
    array = codecs.decode(input_data, ctype, np.float32, width)
    if isinstance(array, dict):
        raise BadRequestError("named inputs are not an xgboost model's input: send one feature matrix")
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2:
        raise BadRequestError(f"expected rows of features, got an array of shape {list(array.shape)}")
    if width is not None and array.shape[1] != width:
        raise BadRequestError(f"the model takes {width} features per row, got {array.shape[1]}")
    if not _is_booster(model):
        return array
    return _dmatrix(array)


def _dmatrix(data: Any) -> Any:
    # imported here: only xgboost models reach this, and a serving-only install may lack xgboost
    import xgboost as xgb

    return xgb.DMatrix(data, missing=np.nan)


def predict(data: Any, model: Any) -> Any:
    """The default ``predict_fn``: the booster's prediction (a user ``input_fn`` may return an array, a
    sparse matrix or a DataFrame: it is wrapped in a DMatrix first)."""
    if _is_booster(model):
        if type(data).__name__ != "DMatrix":
            data = _dmatrix(data)
        return model.predict(data, validate_features=False)
    return model.predict(data)
