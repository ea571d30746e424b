"""Lists side by side: the evaluator's metrics, bootstrap std, NDCG ratios and paired differences with baselines."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.evaluation.full_ranking import ListEvaluator, bootstrap_spread
from recsys.evaluation.list_comparison import compare_lists, describe_against, paired_metrics
from recsys.evaluation.paired import paired_differences
from tests.online_fixtures import tiny_tables


@pytest.fixture(scope="module")
def evaluated():
    _, movies, interactions = tiny_tables()
    evaluator = ListEvaluator.for_test(interactions, movies)
    by_user = interactions.set_index("user_id")
    test = by_user[by_user["split"] == "test"]["movie_id"]
    train = by_user[by_user["split"] == "train"]["movie_id"].groupby(level=0).apply(list)
    users = evaluator.users
    lists = {
        "seen": np.array([train[u][:2] for u in users]),  # never relevant
        "oracle": np.array([[test[u], train[u][0]] for u in users]),  # the test movie first
        "half": np.array([[test[u], train[u][0]] if i % 2 else [train[u][0], test[u]] for i, u in enumerate(users)]),
    }
    return evaluator, lists


def test_rows_hold_the_evaluators_metrics_their_spread_and_ratios(evaluated):
    evaluator, lists = evaluated
    table = compare_lists(evaluator, lists, 2, 40, 3, relative_to=("oracle",))
    assert table.index.tolist() == ["seen", "oracle", "half"]
    for name, ids in lists.items():
        for metric, value in evaluator.evaluate(ids, k=2).items():
            assert table.loc[name, metric] == pytest.approx(value)
    assert table.loc["oracle", "ndcg_at_2"] == pytest.approx(1.0) and table.loc["seen", "recall_at_2"] == 0
    spread = bootstrap_spread({name: evaluator.per_user(ids, k=2) for name, ids in lists.items()}, 40, 3)
    std = spread.set_index(["strategy", "metric"])["std"]
    for name in lists:
        assert table.loc[name, "ndcg_at_2_std"] == pytest.approx(std[(name, "ndcg_at_2")])
        assert table.loc[name, "recall_at_2_std"] == pytest.approx(std[(name, "recall_at_2")])
    assert table.loc["oracle", "ndcg_at_2_std"] == 0 and table.loc["half", "ndcg_at_2_std"] > 0
    expected = table["ndcg_at_2"] / table.loc["oracle", "ndcg_at_2"]
    pd.testing.assert_series_equal(table["ndcg_vs_oracle"], expected, check_names=False)
    assert 0 < table.loc["half", "ndcg_vs_oracle"] < 1


def test_an_unknown_baseline_is_named(evaluated):
    evaluator, lists = evaluated
    with pytest.raises(KeyError, match="ease"):
        compare_lists(evaluator, lists, 2, 10, 0, relative_to=("ease",))


def test_rows_carry_the_paired_difference_with_each_baseline_and_its_interval(evaluated):
    evaluator, lists = evaluated
    table = compare_lists(evaluator, lists, 2, 40, 3, relative_to=("oracle", "seen"))
    per_user = {name: evaluator.per_user(ids, k=2) for name, ids in lists.items()}
    gaps = paired_differences(per_user, [("half", "oracle"), ("seen", "oracle")], ["ndcg_at_2"], 40, 3).table
    for name in ("half", "seen"):  # the same resamples as paired_differences (and as the spreads)
        gap = gaps.loc[(name, "oracle", "ndcg_at_2")]
        assert table.loc[name, "ndcg_at_2_minus_oracle"] == pytest.approx(gap["difference"])
        assert table.loc[name, "ndcg_at_2_minus_oracle_low"] == pytest.approx(gap["low_2.5%"])
        assert table.loc[name, "ndcg_at_2_minus_oracle_high"] == pytest.approx(gap["high_97.5%"])
    assert table.loc["seen", "recall_at_2_minus_oracle"] == pytest.approx(-1.0)  # never a hit against always one
    assert table.loc["half", "ndcg_at_2_minus_oracle_low"] < table.loc["half", "ndcg_at_2_minus_oracle_high"] < 0
    assert np.isnan(table.loc["oracle", "ndcg_at_2_minus_oracle"]) and np.isnan(
        table.loc["seen", "recall_at_2_minus_seen"]
    )

    record = paired_metrics(table)
    assert set(record) == {
        f"{metric}_{name}_minus_{base}{suffix}"
        for metric in ("recall_at_2", "ndcg_at_2")
        for base in ("oracle", "seen")
        for name in lists
        if name != base
        for suffix in ("", "_low", "_high")
    }
    assert record["ndcg_at_2_half_minus_oracle_low"] == table.loc["half", "ndcg_at_2_minus_oracle_low"]
    learned = paired_metrics(table.loc[["half"]].rename(index={"half": "learned"}))
    assert learned["recall_at_2_learned_minus_seen_high"] == table.loc["half", "recall_at_2_minus_seen_high"]


def test_describe_against_gives_the_ratio_and_the_interval(evaluated):
    evaluator, lists = evaluated
    table = compare_lists(evaluator, lists, 2, 40, 3, relative_to=("oracle",))
    sentence = describe_against(table, "half", "oracle", "ndcg_at_2")
    assert sentence.startswith(f"ndcg_at_2: half / oracle = {table.loc['half', 'ndcg_vs_oracle']:.3f}, difference -")
    assert "no difference shown" not in sentence  # half is below the oracle for every other user
    same = compare_lists(evaluator, {**lists, "copy": lists["half"]}, 2, 40, 3, relative_to=("half",))
    assert describe_against(same, "copy", "half", "recall_at_2").endswith(": no difference shown")
    with pytest.raises(KeyError, match="relative_to"):
        describe_against(table, "half", "seen", "ndcg_at_2")
