"""A request's context (hour, weekday, month): validated, defaulted to now, turned into model inputs."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from recsys.features.encoding import CONTEXT_FEATURES, FeatureEncoder

_CONTEXT_RANGES = {"hour": (0, 23), "weekday": (0, 6), "month": (1, 12)}


def request_context(context: Mapping[str, int] | None = None) -> dict[str, int]:
    """A request's context {hour 0-23, weekday 0-6 (Monday = 0), month 1-12}, validated; None means now.

    Now is taken in UTC, as the interactions' time features are (MovieLens timestamps carry no time zone).
    """
    if context is None:
        now = datetime.now(UTC)
        context = {"hour": now.hour, "weekday": now.weekday(), "month": now.month}
    missing = [name for name in _CONTEXT_RANGES if name not in context]
    if missing:
        raise ValueError(f"context lacks {missing}; give hour (0-23), weekday (0-6, Monday = 0) and month (1-12)")
    for name, (low, high) in _CONTEXT_RANGES.items():
        if not low <= int(context[name]) <= high:
            raise ValueError(f"context {name}={context[name]} is outside {low}..{high}")
    return {name: int(context[name]) for name in _CONTEXT_RANGES}


def context_inputs(encoder: FeatureEncoder, context: Mapping[str, int] | None, n: int) -> dict[str, np.ndarray]:
    """The model's context inputs for n rows of one request (`request_context` describes `context`)."""
    context = request_context(context)
    one_row = encoder.context_inputs(pd.DataFrame({name: [value] for name, value in context.items()}))
    return {name: np.repeat(value, n) for name, value in one_row.items()}


def fixed_context(interactions: pd.DataFrame) -> dict[str, int]:
    """The most frequent training hour, weekday and month: a reproducible stand-in for "now" in offline runs."""
    train = interactions[interactions["split"] == "train"]
    return {name: int(train[name].mode().iloc[0]) for name in CONTEXT_FEATURES}
