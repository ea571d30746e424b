"""The simulation's verdict rule: paired t intervals over seeds, a verdict only where every hidden model agrees."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from recsys.exploration import simulation_verdicts as verdicts


def summaries_of(values: dict[tuple[str, int, str], float]) -> pd.DataFrame:
    """A `seed_summaries`-shaped table from {(hidden, seed, policy): coverage_final}."""
    index = pd.MultiIndex.from_tuples(list(values), names=["hidden", "seed", "policy"])
    return pd.DataFrame({"coverage_final": list(values.values())}, index=index)


def test_the_interval_is_student_t_over_the_seeds_paired_differences():
    a = [0.30, 0.32, 0.31, 0.35, 0.33]
    b = [0.20, 0.25, 0.21, 0.24, 0.22]
    table = summaries_of(
        {("ease", s, "a"): x for s, x in enumerate(a)} | {("ease", s, "b"): x for s, x in enumerate(b)}
    )
    (row,) = verdicts.paired_intervals(table, [("a", "b")], ["coverage_final"]).to_dict("records")
    d = np.subtract(a, b)
    half = stats.t.ppf(0.975, 4) * d.std(ddof=1) / np.sqrt(5)
    assert row["difference"] == pytest.approx(d.mean()) and row["n_seeds"] == 5
    assert (row["low"], row["high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    # paired: a shift shared by both policies in a seed does not widen the interval
    shifted = summaries_of(
        {("ease", s, "a"): x + s for s, x in enumerate(a)} | {("ease", s, "b"): x + s for s, x in enumerate(b)}
    )
    (again,) = verdicts.paired_intervals(shifted, [("a", "b")], ["coverage_final"]).to_dict("records")
    assert (again["low"], again["high"]) == pytest.approx((row["low"], row["high"]))


def test_a_verdict_only_when_the_interval_excludes_zero_under_every_hidden_model():
    assert verdicts.verdict([0.01, 0.02], [0.03, 0.05]) == "higher"
    assert verdicts.verdict([-0.05, -0.04], [-0.01, -0.001]) == "lower"
    assert verdicts.verdict([0.01, -0.01], [0.03, 0.02]) == verdicts.NO_DIFFERENCE  # crosses 0 in one world
    assert verdicts.verdict([0.01, -0.05], [0.03, -0.01]) == verdicts.NO_DIFFERENCE  # the worlds disagree
    assert verdicts.verdict([0.0], [0.1]) == verdicts.NO_DIFFERENCE  # touching 0 is not excluding it
    assert verdicts.verdict([np.nan], [np.nan]) == verdicts.NO_DIFFERENCE  # one seed: no interval
    assert verdicts.verdict([], []) == verdicts.NO_DIFFERENCE


def test_verdicts_and_metrics_of_two_worlds():
    rng = np.random.default_rng(0)
    values = {}
    for hidden, gap in (("ease", 0.1), ("puresvd", 0.0)):  # a clear gap in one world, none in the other
        for seed in range(5):
            base = rng.normal(0.5, 0.01)
            values |= {(hidden, seed, "served"): base, (hidden, seed, "explore"): base + gap + rng.normal(0, 0.01)}
    table = summaries_of(values).assign(**{m: 0.0 for m in verdicts.SUMMARY_METRICS if m != "coverage_final"})
    intervals = verdicts.paired_intervals(table, [("explore", "served")], ["coverage_final"])
    said = verdicts.verdicts(intervals)
    assert said.loc[("explore", "served", "coverage_final"), "verdict"] == verdicts.NO_DIFFERENCE
    ease_only = verdicts.verdicts(intervals[intervals["hidden"] == "ease"])
    assert ease_only.loc[("explore", "served", "coverage_final"), "verdict"] == "higher"
    out = verdicts.simulation_metrics(table, intervals)
    assert out["n_hidden_models"] == 2 and out["n_seeds"] == 5
    assert out["coverage_final_explore_minus_served_verdict"] == verdicts.NO_DIFFERENCE
    assert out["coverage_final_explore_minus_served_under_ease_low"] > 0
    assert (
        out["coverage_final_explore_minus_served_under_puresvd_low"]
        < 0
        < out["coverage_final_explore_minus_served_under_puresvd_high"]
    )
    ease_mean = np.mean([v for (h, _, p), v in values.items() if h == "ease" and p == "explore"])
    assert out["coverage_final_explore_under_ease"] == pytest.approx(ease_mean)
    assert out["coverage_final_explore"] == pytest.approx(
        np.mean([v for (_, _, p), v in values.items() if p == "explore"])
    )


def test_change_intervals_pair_a_policy_s_last_round_with_its_first():
    rows = []
    for seed in range(4):
        for round_, coverage in ((1, 0.5 + seed * 0.1), (2, 0.45 + seed * 0.1), (3, 0.4 + seed * 0.1 + seed * 0.001)):
            rows.append({"hidden": "ease", "seed": seed, "policy": "served", "round": round_, "coverage": coverage})
            rows.append({"hidden": "ease", "seed": seed, "policy": "other", "round": round_, "coverage": 0.9})
    changes = verdicts.change_intervals(pd.DataFrame(rows), "served", ["coverage"], last=3)
    (row,) = changes.to_dict("records")
    assert row["difference"] == pytest.approx(-0.1 + 0.0015) and row["high"] < 0  # paired: the seeds' levels cancel
    assert verdicts.describe_changes(changes)[0].startswith("coverage, round 3 minus round 1: lower")
    out = verdicts.simulation_metrics(
        summaries_of({("ease", 0, "served"): 0.5, ("ease", 1, "served"): 0.6}).assign(
            **{m: 0.0 for m in verdicts.SUMMARY_METRICS if m != "coverage_final"}
        ),
        verdicts.paired_intervals(summaries_of({("ease", 0, "served"): 0.5}), [], []),
        changes,
    )
    assert out["served_coverage_change_verdict"] == "lower" and out["served_coverage_change_under_ease_high"] < 0


def test_seed_summaries_need_the_world_and_seed_of_each_row():
    with pytest.raises(ValueError, match="hidden"):
        verdicts.seed_summaries(pd.DataFrame({"policy": ["a"], "round": [1], "seed": [0]}))
