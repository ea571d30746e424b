"""Request latency: warm-up calls are not timed, every input is timed once, the percentiles are of those times."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.serving.latency import measure_latency


def test_warmup_is_untimed_and_the_percentiles_are_of_the_timed_calls():
    durations = iter([0.001 * i for i in range(1, 101)])  # the i-th timed call takes i ms
    now = [0.0]
    calls = []

    def clock():
        return now[0]

    def request(value):
        calls.append(value)
        if len(calls) > 3:  # after the warm-up, each call advances the clock by its duration
            now[0] += next(durations)

    stats = measure_latency(request, list(range(100)), warmup=3, clock=clock)
    assert calls == [0, 1, 2, *range(100)]
    expected = np.arange(1, 101, dtype=float)
    assert stats["requests"] == 100
    assert stats["p50_ms"] == pytest.approx(np.percentile(expected, 50))
    assert stats["p99_ms"] == pytest.approx(np.percentile(expected, 99))
    assert stats["max_ms"] == pytest.approx(100.0) and stats["mean_ms"] == pytest.approx(50.5)


def test_warmup_longer_than_the_inputs_and_no_inputs():
    calls = []
    stats = measure_latency(calls.append, np.array([5, 6]), warmup=20)
    assert calls == [5, 6, 5, 6] and stats["requests"] == 2 and stats["p50_ms"] >= 0
    with pytest.raises(ValueError, match="at least one input"):
        measure_latency(calls.append, [])
