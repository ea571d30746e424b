"""What the closed-loop simulation may claim: paired intervals over seeds, and a verdict only where every world agrees.

Every seed reruns the whole simulation (acceptance draws and the policies' own randomness) under
each hidden preference model; within a seed and a hidden model all policies face the same
acceptance draws (common random numbers) with the same users, so the difference between two
policies is paired seed by seed. The interval of a difference is Student's t interval over the
seeds' paired differences (`paired_intervals`). A verdict ("higher" / "lower") is printed only
where the interval excludes 0 under *every* hidden model (`verdict`); otherwise the simulation
says "no difference shown".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from recsys.evaluation.paired import NO_DIFFERENCE
from recsys.exploration.simulation import summary

INTERVAL_COLUMNS = ("hidden", "a", "b", "measure", "difference", "low", "high", "n_seeds")
VERDICT_MEASURES = ("accepted_per_user", "coverage_final", "gini_final", "never_shown_final")
SUMMARY_METRICS = (
    "accepted_per_user",
    "cumulative_accepted_per_user",
    "coverage_final",
    "gini_final",
    "never_shown_final",
    "accepted_popularity",
)


def seed_summaries(rounds: pd.DataFrame) -> pd.DataFrame:
    """`simulation.summary` of every (hidden model, seed): indexed by (hidden, seed, policy).

    Args:
        rounds: `simulate`'s per-round rows of every run, with columns `hidden` and `seed` added.
    """
    missing = sorted({"hidden", "seed"} - set(rounds.columns))
    if missing:
        raise ValueError(f"the rounds need the columns {missing} (which hidden model and seed each row ran under)")
    parts = {key: summary(part) for key, part in rounds.groupby(["hidden", "seed"], sort=False)}
    return pd.concat(parts, names=["hidden", "seed", "policy"])


def paired_intervals(
    summaries: pd.DataFrame, pairs: Iterable[tuple[str, str]], measures: Sequence[str] = VERDICT_MEASURES
) -> pd.DataFrame:
    """The difference a - b of each measure, paired by seed, with its 95% t interval, under each hidden model.

    Args:
        summaries: from `seed_summaries`.
        pairs: (a, b) policies.
        measures: columns of the summaries.

    Returns:
        One row per (hidden, a, b, measure): difference (mean over seeds), low, high (the 95%
        Student t interval of the mean paired difference; NaN with fewer than 2 seeds) and n_seeds.
    """
    rows = []
    for hidden, table in summaries.groupby(level="hidden", sort=False):
        table = table.droplevel("hidden")
        for a, b in pairs:
            for measure in measures:
                values = table[measure].unstack("policy")
                rows.append({"hidden": hidden, "a": a, "b": b, "measure": measure, **t_interval(values[a] - values[b])})
    return pd.DataFrame(rows, columns=list(INTERVAL_COLUMNS))


def t_interval(differences: Sequence[float] | pd.Series) -> dict[str, float]:
    """Mean of paired differences (one per seed) and its 95% Student t interval: difference, low, high, n_seeds."""
    values = np.asarray(differences, np.float64)
    n, mean = len(values), float(values.mean())
    half = float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / np.sqrt(n)) if n >= 2 else float("nan")
    return {"difference": mean, "low": mean - half, "high": mean + half, "n_seeds": n}


def change_intervals(rounds: pd.DataFrame, policy: str, measures: Sequence[str], last: int) -> pd.DataFrame:
    """How one policy's per-round measures move from round 1 to round `last`, paired by seed, under each hidden model.

    Returns:
        One row per (hidden, measure) as `paired_intervals` gives them, with a = "round <last>", b = "round 1".
    """
    own = rounds[rounds["policy"] == policy].set_index(["hidden", "seed", "round"])
    rows = []
    for hidden, table in own.groupby(level="hidden", sort=False):
        for measure in measures:
            by_round = table[measure].droplevel("hidden").unstack("round")
            change = t_interval(by_round[last] - by_round[1])
            rows.append({"hidden": hidden, "a": f"round {last}", "b": "round 1", "measure": measure, **change})
    return pd.DataFrame(rows, columns=list(INTERVAL_COLUMNS))


def verdict(lows: Sequence[float], highs: Sequence[float]) -> str:
    """ "higher" when every interval is above 0, "lower" when every one is below, else NO_DIFFERENCE.

    One interval per hidden model; a NaN bound (too few seeds) never gives a verdict.
    """
    lows, highs = np.asarray(lows, np.float64), np.asarray(highs, np.float64)
    if not len(lows) or np.isnan(lows).any() or np.isnan(highs).any():
        return NO_DIFFERENCE
    if (lows > 0).all():
        return "higher"
    if (highs < 0).all():
        return "lower"
    return NO_DIFFERENCE


def verdicts(intervals: pd.DataFrame) -> pd.DataFrame:
    """One row per (a, b, measure): the verdict over the hidden models, and each model's interval as text."""
    rows = []
    for (a, b, measure), part in intervals.groupby(["a", "b", "measure"], sort=False):
        row = {"a": a, "b": b, "measure": measure, "verdict": verdict(part["low"], part["high"])}
        for _, one in part.iterrows():
            row[one["hidden"]] = f"{one['difference']:+.4f} [{one['low']:+.4f}, {one['high']:+.4f}]"
        rows.append(row)
    columns = list(rows[0]) if rows else ["a", "b", "measure", "verdict"]
    return pd.DataFrame(rows, columns=columns).set_index(["a", "b", "measure"])


def simulation_metrics(
    summaries: pd.DataFrame, intervals: pd.DataFrame, changes: pd.DataFrame | None = None, policy: str = "served"
) -> dict[str, float | str | int]:
    """The flat record of a simulation.

    Keys: `n_hidden_models`, `n_seeds`; `<measure>_<policy>` (mean over every seed and hidden
    model) and `<measure>_<policy>_under_<hidden>` for SUMMARY_METRICS; per compared pair and measure
    `<measure>_<a>_minus_<b>_under_<hidden>` with `_low` and `_high`, and `<measure>_<a>_minus_<b>_verdict`;
    with `changes` (`change_intervals` of `policy`), `<policy>_<measure>_change_under_<hidden>` with
    `_low` and `_high`, and `<policy>_<measure>_change_verdict`.
    """
    hidden_models = summaries.index.get_level_values("hidden").unique()
    out: dict[str, float | str | int] = {
        "n_hidden_models": len(hidden_models),
        "n_seeds": int(summaries.index.get_level_values("seed").nunique()),
    }
    overall = summaries.groupby(level="policy", sort=False).mean()
    under = summaries.groupby(level=["hidden", "policy"], sort=False).mean()
    for name, row in overall.iterrows():
        out.update({f"{measure}_{name}": float(row[measure]) for measure in SUMMARY_METRICS})
        for hidden in hidden_models:
            out.update({f"{m}_{name}_under_{hidden}": float(under.loc[(hidden, name), m]) for m in SUMMARY_METRICS})
    for _, row in intervals.iterrows():
        name = f"{row['measure']}_{row['a']}_minus_{row['b']}_under_{row['hidden']}"
        out[name], out[f"{name}_low"], out[f"{name}_high"] = row["difference"], row["low"], row["high"]
    for (a, b, measure), row in verdicts(intervals).iterrows():
        out[f"{measure}_{a}_minus_{b}_verdict"] = row["verdict"]
    if changes is not None:
        for _, row in changes.iterrows():
            name = f"{policy}_{row['measure']}_change_under_{row['hidden']}"
            out[name], out[f"{name}_low"], out[f"{name}_high"] = row["difference"], row["low"], row["high"]
        for measure, part in changes.groupby("measure", sort=False):
            out[f"{policy}_{measure}_change_verdict"] = verdict(part["low"], part["high"])
    return out


def describe_changes(changes: pd.DataFrame) -> list[str]:
    """A sentence per measure of `change_intervals`: the verdict over the hidden models and each model's interval."""
    lines = []
    for measure, part in changes.groupby("measure", sort=False):
        each = "; ".join(f"{r.hidden} {r.difference:+.4f} [{r.low:+.4f}, {r.high:+.4f}]" for r in part.itertuples())
        a, b = part["a"].iloc[0], part["b"].iloc[0]
        lines.append(f"{measure}, {a} minus {b}: {verdict(part['low'], part['high'])} ({each})")
    return lines
