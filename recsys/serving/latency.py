"""Wall time per request of a serving call: warm-up calls, then one timed call per input, summarised as percentiles."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def measure_latency(
    request: Callable[[Any], object],
    inputs: Sequence,
    warmup: int = 20,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Time `request(input)` once per input, after untimed warm-up calls on the first `warmup` inputs.

    Warm-up pays what only the first calls pay (graph tracing, caches), so the percentiles
    describe a serving process that is already running.

    Args:
        request: one request, e.g. `lambda user_id: recommend(user_id, k, **args)`.
        inputs: what each timed request is called with (repeats allowed).
        warmup: how many of the first inputs are requested once, untimed, before timing starts.
        clock: seconds as a float (time.perf_counter; a fake one in tests).

    Returns:
        requests (how many were timed), p50_ms, p99_ms, max_ms, mean_ms.

    Raises:
        ValueError: no inputs to time.
    """
    if not len(inputs):
        raise ValueError("measure_latency needs at least one input to time")
    for value in inputs[:warmup]:
        request(value)
    milliseconds = np.empty(len(inputs))
    for i, value in enumerate(inputs):
        start = clock()
        request(value)
        milliseconds[i] = (clock() - start) * 1e3
    p50, p99 = np.percentile(milliseconds, [50, 99])
    return {
        "requests": len(milliseconds),
        "p50_ms": float(p50),
        "p99_ms": float(p99),
        "max_ms": float(milliseconds.max()),
        "mean_ms": float(milliseconds.mean()),
    }
