"""Paired differences between models scored on the same users: the mean gap a - b and its bootstrap interval.

Two models' means on a few hundred or thousand users move with the users drawn; their
difference moves less, because a user who is easy for one model is mostly easy for the other.
The paired bootstrap resamples the users (with replacement) and takes the mean of each user's
difference a - b over every resample, the same resamples for every pair
(`full_ranking.bootstrap_spread`: they depend only on the seed and the number of users, so they
are also the resamples of the spreads beside them). When the 95% interval holds 0, the data do
not show which of the two is better: "no difference shown".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsys.evaluation.full_ranking import bootstrap_spread

NO_DIFFERENCE = "no difference shown"


def crosses_zero(low: float, high: float) -> bool:
    """Whether an interval [low, high] holds 0 (a difference the resampling cannot tell from none)."""
    return bool(low <= 0 <= high)


def describe_difference(difference: float, low: float, high: float) -> str:
    """`difference +0.0123 (95% paired bootstrap interval +0.0040 to +0.0210)`, followed by ": no difference
    shown" when the interval holds 0."""
    text = f"difference {difference:+.4f} (95% paired bootstrap interval {low:+.4f} to {high:+.4f})"
    return f"{text}: {NO_DIFFERENCE}" if crosses_zero(low, high) else text


@dataclass
class PairedDifferences:
    """Pairs of models compared on the same users, per metric.

    Attributes:
        table: one row per (a, b, metric) in the order of the pairs, then the metrics: the means of
            a and b, their ratio a / b, the mean difference a - b, its 95% interval (`low_2.5%`,
            `high_97.5%`) over the bootstrap resamples, and `verdict` ("a higher", "b higher" or
            "no difference shown").
        n_users: the users every model was scored on.
        n_resamples: bootstrap resamples of those users.
    """

    table: pd.DataFrame
    n_users: int
    n_resamples: int

    def metrics(self, tag: str = "") -> dict[str, float]:
        """A flat record: `<metric>_<a>_minus_<b>` (the mean difference) with `_low` and `_high` (its interval);
        a `tag` goes after the metric's name (`<metric>_<tag>_<a>_minus_<b>`), e.g. for a task of its own."""
        out = {}
        for (a, b, metric), row in self.table.iterrows():
            name = f"{metric}_{tag}_{a}_minus_{b}" if tag else f"{metric}_{a}_minus_{b}"
            out[name] = float(row["difference"])
            out[f"{name}_low"], out[f"{name}_high"] = float(row["low_2.5%"]), float(row["high_97.5%"])
        return out

    def describe(self, a: str, b: str, metric: str) -> str:
        """`<metric> a - b: ` and `describe_difference` of that pair."""
        row = self.table.loc[(a, b, metric)]
        return f"{metric} {a} - {b}: " + describe_difference(row["difference"], row["low_2.5%"], row["high_97.5%"])


def paired_differences(
    per_user: Mapping[str, pd.DataFrame],
    pairs: Sequence[tuple[str, str]],
    metric_names: Sequence[str],
    n_resamples: int,
    seed: int,
) -> PairedDifferences:
    """The mean difference a - b of each metric for each pair, with its 95% paired bootstrap interval.

    Args:
        per_user: model -> per-user metrics (e.g. `full_ranking.per_user_scores`,
            `ListEvaluator.per_user`), the same users in the same order for every model.
        pairs: (a, b) model names; each difference is a - b.
        metric_names: columns of the per-user tables to compare (e.g. recall_at_10, ndcg_at_10).
        n_resamples: bootstrap resamples of the users (with replacement).
        seed: seeds the resampling (the same resamples for every pair and metric).

    Raises:
        KeyError: a pair names a model without per-user metrics, or a metric is not in a table.
        ValueError: a pair compares a model with itself, or two models were scored on other users.
    """
    unknown = sorted({name for pair in pairs for name in pair} - set(per_user))
    if unknown:
        raise KeyError(f"pairs name models without per-user metrics: {unknown} (models: {sorted(per_user)})")
    same = [a for a, b in pairs if a == b]
    if same:
        raise ValueError(f"a pair compares {same[0]!r} with itself")
    metric_names = list(metric_names)
    columns = ["a", "b", "metric", "mean_a", "mean_b", "ratio", "difference", "low_2.5%", "high_97.5%", "verdict"]
    if not pairs:
        return PairedDifferences(pd.DataFrame(columns=columns).set_index(["a", "b", "metric"]), 0, n_resamples)
    for name in {name for pair in pairs for name in pair}:
        absent = [metric for metric in metric_names if metric not in per_user[name].columns]
        if absent:
            raise KeyError(f"{name}'s per-user table has no {absent}; it has {list(per_user[name].columns)}")
    users = per_user[pairs[0][0]].index
    for name in {name for pair in pairs for name in pair}:
        if not per_user[name].index.equals(users):
            raise ValueError(f"{name} was scored on other users than {pairs[0][0]}: compare models on the same users")
    gaps = {
        f"{a} - {b}": pd.DataFrame(
            per_user[a][metric_names].to_numpy(np.float64) - per_user[b][metric_names].to_numpy(np.float64),
            index=users,
            columns=metric_names,
        )
        for a, b in pairs
    }
    spread = bootstrap_spread(gaps, n_resamples, seed).set_index(["strategy", "metric"])
    rows = []
    for a, b in pairs:
        for metric in metric_names:
            mean_a, mean_b = float(per_user[a][metric].mean()), float(per_user[b][metric].mean())
            gap = spread.loc[(f"{a} - {b}", metric)]
            low, high = float(gap["low_2.5%"]), float(gap["high_97.5%"])
            verdict = NO_DIFFERENCE if crosses_zero(low, high) else f"{a if low > 0 else b} higher"
            ratio = mean_a / mean_b if mean_b else np.nan
            rows.append([a, b, metric, mean_a, mean_b, ratio, float(gap["mean"]), low, high, verdict])
    table = pd.DataFrame(rows, columns=columns).set_index(["a", "b", "metric"])
    return PairedDifferences(table, len(users), n_resamples)


@dataclass(frozen=True)
class RmseDifference:
    """Two rating models' RMSE on the same rated pairs, and the paired bootstrap interval of RMSE a - RMSE b.

    Attributes:
        rmse_a, rmse_b: each model's RMSE over every pair.
        difference: rmse_a - rmse_b (negative: a errs less).
        low, high: the 2.5% and 97.5% quantiles of the difference over resamples of the users.
        n_users, n_ratings, n_resamples: what the interval was computed over.
    """

    rmse_a: float
    rmse_b: float
    difference: float
    low: float
    high: float
    n_users: int
    n_ratings: int
    n_resamples: int

    def describe(self, a: str, b: str) -> str:
        """`RMSE a - b: ` and `describe_difference` (lower is better here: a negative difference favours a)."""
        return f"RMSE {a} - {b}: " + describe_difference(self.difference, self.low, self.high)


def paired_rmse_difference(
    user_ids,
    ratings,
    predictions_a,
    predictions_b,
    n_resamples: int,
    seed: int,
) -> RmseDifference:
    """RMSE a - RMSE b over the same rated pairs, with a 95% interval from resampling the users.

    A user's ratings are not independent draws (a user who is hard for one model is hard for the
    other), so the resampling unit is the user, not the rating: each resample draws the users
    with replacement (as `bootstrap_spread` does), keeps every rating of each drawn user, and
    computes both RMSEs over those ratings. The interval is of the RMSE difference itself, in
    stars (its sign is the sign of the mean-squared-error difference on every resample).

    Args:
        user_ids: the user of each rated pair.
        ratings: the observed ratings.
        predictions_a, predictions_b: each model's predictions for the same pairs, in the same
            order, already clipped to the rating scale as the reported RMSE is.
        n_resamples: bootstrap resamples of the users.
        seed: seeds the resampling.

    Raises:
        ValueError: the arrays differ in length, are empty, hold NaN, or n_resamples < 1.
    """
    arrays = [np.asarray(values, dtype=np.float64).ravel() for values in (ratings, predictions_a, predictions_b)]
    users = np.asarray(user_ids).ravel()
    lengths = {"user_ids": users.size, "ratings": arrays[0].size, "predictions_a": arrays[1].size}
    lengths["predictions_b"] = arrays[2].size
    if len(set(lengths.values())) != 1:
        raise ValueError(f"one value per rated pair is needed in every array; their lengths are {lengths}")
    if users.size == 0:
        raise ValueError("no rated pairs to compare: the arrays are empty")
    for name, values in zip(("ratings", "predictions_a", "predictions_b"), arrays):
        if np.isnan(values).any():
            raise ValueError(f"{name} holds {int(np.isnan(values).sum())} NaN values: predict every pair")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    truth, a, b = arrays
    _, user_index = np.unique(users, return_inverse=True)
    n_users = int(user_index.max()) + 1
    # per user: rated pairs, summed squared errors of a and of b
    counts = np.bincount(user_index, minlength=n_users).astype(np.float64)
    squared_a = np.bincount(user_index, weights=(truth - a) ** 2, minlength=n_users)
    squared_b = np.bincount(user_index, weights=(truth - b) ** 2, minlength=n_users)
    picks = np.random.default_rng(seed).integers(0, n_users, size=(n_resamples, n_users))
    pairs = counts[picks].sum(axis=1)
    differences = np.sqrt(squared_a[picks].sum(axis=1) / pairs) - np.sqrt(squared_b[picks].sum(axis=1) / pairs)
    rmse_a, rmse_b = float(np.sqrt(squared_a.sum() / counts.sum())), float(np.sqrt(squared_b.sum() / counts.sum()))
    return RmseDifference(
        rmse_a=rmse_a,
        rmse_b=rmse_b,
        difference=rmse_a - rmse_b,
        low=float(np.quantile(differences, 0.025)),
        high=float(np.quantile(differences, 0.975)),
        n_users=n_users,
        n_ratings=int(users.size),
        n_resamples=n_resamples,
    )
