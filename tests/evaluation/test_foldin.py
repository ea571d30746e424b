"""Several models compared on the fold-in users (recsys.evaluation.foldin.compare_foldin): means, spreads, paired gaps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.evaluation.foldin import compare_foldin, foldin_split
from recsys.evaluation.full_ranking import bootstrap_spread

CATALOGUE = np.arange(1, 31) * 10


@pytest.fixture(scope="module")
def interactions():
    """12 fold-in users with 8 ratings each, in time order (position)."""
    rng = np.random.default_rng(5)
    rows = [
        (user, movie, position)
        for user in range(100, 112)
        for position, movie in enumerate(rng.choice(CATALOGUE, 8, replace=False))
    ]
    return pd.DataFrame(rows, columns=["user_id", "movie_id", "position"])


def oracle(fold):
    """Scores the held-out movies 1, everything else 0: every later movie in the list."""
    return fold.rest.toarray().astype(np.float32)


def anti_oracle(fold):
    """Scores the held-out movies lowest: none of them in the top 10 (30 movies, at most 7 held out)."""
    return -fold.rest.toarray().astype(np.float32)


def test_compare_foldin_tables_spreads_gaps_and_metric_keys(interactions):
    scorers = {"oracle": oracle, "anti": anti_oracle}
    comparison = compare_foldin(
        interactions, CATALOGUE, scorers, given=[2, 5], gaps=[("oracle", "anti")], n_resamples=50, seed=1, ks=(10, 20)
    )
    table, gaps = comparison.table, comparison.gaps
    assert list(table.index) == [(2, "oracle"), (2, "anti"), (5, "oracle"), (5, "anti")]
    assert (table["users"] == 12).all()
    assert table.loc[(2, "oracle"), "recall_at_10"] == 1.0 and table.loc[(5, "anti"), "recall_at_10"] == 0.0
    assert (table["recall_at_10_std"] == 0).all()  # every user scores the same: no spread
    assert list(gaps.index) == [(2, "oracle - anti"), (5, "oracle - anti")]
    assert (gaps[["mean", "low_2.5%", "high_97.5%"]] == 1.0).all().all()

    record = comparison.metrics()
    assert record["recall_at_10_foldin2_oracle"] == 1.0 and record["ndcg_at_10_foldin5_anti"] == 0.0
    assert record["recall_at_10_foldin5_oracle_minus_anti_low"] == record["recall_at_10_foldin5_oracle_minus_anti_high"]
    assert len(record) == 4 * 3 + 2 * 2
    with pytest.raises(ValueError, match="without a scorer"):
        compare_foldin(interactions, CATALOGUE, scorers, [2], [("oracle", "popularity")], 10, seed=1)


def test_compare_foldin_spread_is_the_paired_bootstrap_of_the_per_user_metrics(interactions):
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(12, len(CATALOGUE))).astype(np.float32)
    scorers = {"noisy": lambda fold: noise + fold.rest.toarray(), "random": lambda fold: noise}
    comparison = compare_foldin(
        interactions, CATALOGUE, scorers, [3], [("noisy", "random")], n_resamples=80, seed=4, ks=(10, 20)
    )
    fold = foldin_split(interactions, CATALOGUE, 3)
    per_user = {name: fold.per_user(score(fold), ks=(10, 20)) for name, score in scorers.items()}
    per_user["noisy - random"] = per_user["noisy"] - per_user["random"]
    spread = bootstrap_spread(per_user, 80, seed=4).set_index(["strategy", "metric"])
    assert comparison.table.loc[(3, "random"), "recall_at_10"] == pytest.approx(
        per_user["random"]["recall_at_10"].mean()
    )
    assert comparison.table.loc[(3, "noisy"), "recall_at_10_std"] == spread.loc[("noisy", "recall_at_10"), "std"]
    assert (
        comparison.gaps.loc[(3, "noisy - random"), "low_2.5%"]
        == spread.loc[("noisy - random", "recall_at_10"), "low_2.5%"]
    )
