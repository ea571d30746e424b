"""Several strategies' top-k lists side by side: their metrics, bootstrap spread, and accuracy relative to baselines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from recsys.evaluation.full_ranking import ListEvaluator, bootstrap_spread


def compare_lists(
    evaluator: ListEvaluator,
    lists: Mapping[str, np.ndarray],
    k: int,
    n_resamples: int,
    seed: int,
    relative_to: Sequence[str] = (),
) -> pd.DataFrame:
    """One row per strategy: the evaluator's metrics, their spread over resampled users, NDCG relative to baselines.

    Args:
        evaluator: scores lists of the evaluator's users (ListEvaluator.for_test).
        lists: strategy -> (n_users, >= k) movie ids, rows the evaluator's users.
        k: list length scored.
        n_resamples, seed: the bootstrap over users (the same resamples for every strategy).
        relative_to: strategies (rows of `lists`) whose NDCG@k the others are divided by.

    Returns:
        Indexed by strategy, in the order of `lists`: recall_at_k, ndcg_at_k, coverage_at_k,
        novelty, intra_list_diversity, gini; recall_at_k_std and ndcg_at_k_std (bootstrap std of
        the mean); ndcg_vs_<baseline> per baseline of `relative_to`.

    Raises:
        KeyError: a baseline of `relative_to` is not one of `lists`.
    """
    missing = [name for name in relative_to if name not in lists]
    if missing:
        raise KeyError(f"baselines {missing} are not among the compared lists {list(lists)}")
    table = pd.DataFrame({name: evaluator.evaluate(ids, k=k) for name, ids in lists.items()}).T
    per_user = {name: evaluator.per_user(ids, k=k) for name, ids in lists.items()}
    spread = bootstrap_spread(per_user, n_resamples, seed)
    for metric in (f"recall_at_{k}", f"ndcg_at_{k}"):
        table[f"{metric}_std"] = spread[spread["metric"] == metric].set_index("strategy")["std"]
    for name in relative_to:
        table[f"ndcg_vs_{name}"] = table[f"ndcg_at_{k}"] / table.loc[name, f"ndcg_at_{k}"]
    return table
