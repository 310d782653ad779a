"""Typed, validated access to a built-in algorithm's hyperparameters; errors name the field."""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from typing import Any

from training.errors import HyperparameterError

_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


class Hyperparameters:
    """Reads hyperparameters (strings or JSON-decoded values) and remembers which names were read."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = {
            k: v for k, v in raw.items() if not k.startswith("sagemaker_") and k != "_tuning_objective_metric"
        }
        #: the objective metric of the tuning job that launched this training job (``validation:auc``)
        self.tuning_objective_metric = str(raw.get("_tuning_objective_metric") or "")

    def has(self, name: str) -> bool:
        return name in self.raw and str(self.raw[name]).strip().lower() not in {"", "auto", "none"}

    def _value(self, name: str) -> str | None:
        if name not in self.raw:
            return None
        value = self.raw[name]
        text = str(value).strip()
        return text

    def check_known(self, known: Iterable[str]) -> None:
        """Reject names the algorithm does not define (a typo must not silently do nothing)."""
        allowed = set(known)
        for name in sorted(self.raw):
            if name not in allowed:
                raise HyperparameterError(name, "is not a hyperparameter of this algorithm")

    def int(
        self,
        name: str,
        default: int | None = None,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
        required: bool = False,
    ) -> int | None:
        text = self._value(name)
        if text is None or text.lower() == "auto":
            if required:
                raise HyperparameterError(name, "is required")
            return default
        try:
            value = int(float(text)) if float(text).is_integer() else None
        except ValueError:
            value = None
        if value is None:
            raise HyperparameterError(name, f"{text!r} is not an integer")
        self._range(name, value, minimum, maximum)
        return value

    def float(
        self,
        name: str,
        default: float | None = None,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        required: bool = False,
        exclusive_min: bool = False,
    ) -> float | None:
        text = self._value(name)
        if text is None or text.lower() == "auto":
            if required:
                raise HyperparameterError(name, "is required")
            return default
        try:
            value = float(text)
        except ValueError:
            raise HyperparameterError(name, f"{text!r} is not a number") from None
        if value != value:
            raise HyperparameterError(name, "must not be NaN")
        if exclusive_min and minimum is not None and value <= minimum:
            raise HyperparameterError(name, f"{value:g} must be greater than {minimum:g}")
        self._range(name, value, minimum, maximum)
        return value

    def bool(self, name: str, default: bool) -> bool:
        text = self._value(name)
        if text is None or text.lower() == "auto":
            return default
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise HyperparameterError(name, f"{text!r} is not a boolean (true/false)")

    def choice(
        self, name: str, default: str | None, choices: Iterable[str], *, required: builtins.bool = False
    ) -> str | None:
        text = self._value(name)
        options = list(choices)
        if text is None or (text.lower() == "auto" and "auto" not in options):
            if required:
                raise HyperparameterError(name, f"is required (one of {', '.join(options)})")
            return default
        if text not in options:
            raise HyperparameterError(name, f"{text!r} is not one of {', '.join(options)}")
        return text

    def string(self, name: str, default: str | None = None) -> str | None:
        text = self._value(name)
        return default if text is None else text

    @staticmethod
    def _range(
        name: str, value: builtins.float, minimum: builtins.float | None, maximum: builtins.float | None
    ) -> None:
        if minimum is not None and value < minimum:
            raise HyperparameterError(name, f"{value:g} is below the minimum {minimum:g}")
        if maximum is not None and value > maximum:
            raise HyperparameterError(name, f"{value:g} is above the maximum {maximum:g}")
