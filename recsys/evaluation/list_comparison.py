"""Several strategies' top-k lists side by side: their metrics, bootstrap spread, and accuracy relative to baselines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from recsys.evaluation.full_ranking import ListEvaluator, bootstrap_spread
from recsys.evaluation.paired import describe_difference, paired_differences

DIFFERENCE_COLUMNS = {"difference": "", "low_2.5%": "_low", "high_97.5%": "_high"}  # column -> name suffix


def compare_lists(
    evaluator: ListEvaluator,
    lists: Mapping[str, np.ndarray],
    k: int,
    n_resamples: int,
    seed: int,
    relative_to: Sequence[str] = (),
) -> pd.DataFrame:
    """One row per strategy: the evaluator's metrics, their spread over resampled users, accuracy against baselines.

    Every bootstrap (spreads and differences) draws the same resamples of the users, so the
    difference of a row and a baseline is paired (`recsys.evaluation.paired`).

    Args:
        evaluator: scores lists of the evaluator's users (ListEvaluator.for_test).
        lists: strategy -> (n_users, >= k) movie ids, rows the evaluator's users.
        k: list length scored.
        n_resamples, seed: the bootstrap over users (the same resamples for every strategy).
        relative_to: strategies (rows of `lists`) the others are compared with.

    Returns:
        Indexed by strategy, in the order of `lists`: recall_at_k, ndcg_at_k, coverage_at_k,
        novelty, intra_list_diversity, gini; recall_at_k_std and ndcg_at_k_std (bootstrap std of
        the mean); per baseline of `relative_to`, ndcg_vs_<baseline> (the ratio of NDCG@k) and, for
        recall_at_k and ndcg_at_k, `<metric>_minus_<baseline>` (the mean per-user difference row -
        baseline) with `_low` and `_high` (its 95% paired bootstrap interval); NaN on the baseline's own row.

    Raises:
        KeyError: a baseline of `relative_to` is not one of `lists`.
    """
    missing = [name for name in relative_to if name not in lists]
    if missing:
        raise KeyError(f"baselines {missing} are not among the compared lists {list(lists)}")
    table = pd.DataFrame({name: evaluator.evaluate(ids, k=k) for name, ids in lists.items()}).T
    per_user = {name: evaluator.per_user(ids, k=k) for name, ids in lists.items()}
    spread = bootstrap_spread(per_user, n_resamples, seed)
    accuracy = (f"recall_at_{k}", f"ndcg_at_{k}")
    for metric in accuracy:
        table[f"{metric}_std"] = spread[spread["metric"] == metric].set_index("strategy")["std"]
    for name in relative_to:
        table[f"ndcg_vs_{name}"] = table[f"ndcg_at_{k}"] / table.loc[name, f"ndcg_at_{k}"]
    pairs = [(name, base) for base in relative_to for name in lists if name != base]
    gaps = paired_differences(per_user, pairs, accuracy, n_resamples, seed).table
    for base in relative_to:
        for metric in accuracy:
            rows = gaps.xs((base, metric), level=("b", "metric"))
            for column, suffix in DIFFERENCE_COLUMNS.items():
                table[f"{metric}_minus_{base}{suffix}"] = rows[column].astype(float)  # NaN on the baseline's row
    return table


def paired_metrics(table: pd.DataFrame) -> dict[str, float]:
    """metrics.json entries of `compare_lists`'s differences: `<metric>_<strategy>_minus_<baseline>` (the mean
    difference), with `_low` and `_high` (its 95% interval), for every row but the baseline's own."""
    columns = [column for column in table.columns if "_minus_" in column]
    out = {}
    for name, row in table.iterrows():
        for column in columns:
            metric, rest = column.split("_minus_", 1)
            if not pd.isna(row[column]):
                out[f"{metric}_{name}_minus_{rest}"] = float(row[column])
    return out


def describe_against(table: pd.DataFrame, name: str, base: str, metric: str) -> str:
    """A row against a baseline in a sentence: the ratio of `metric`, the difference and its 95% interval
    (`paired.describe_difference`: "no difference shown" when the interval holds 0).

    Raises:
        KeyError: `compare_lists` did not compare the rows with `base` (not in its `relative_to`).
    """
    if f"{metric}_minus_{base}" not in table.columns:
        raise KeyError(f"the table holds no {metric} difference with {base!r}: pass it in compare_lists's relative_to")
    row = table.loc[name]
    ratio = row[metric] / table.loc[base, metric]
    difference, low, high = (row[f"{metric}_minus_{base}{suffix}"] for suffix in DIFFERENCE_COLUMNS.values())
    return f"{metric}: {name} / {base} = {ratio:.3f}, " + describe_difference(difference, low, high)
