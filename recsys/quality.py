"""Data-quality accounting for notebook 01: what was read, what was dropped and why."""

from __future__ import annotations

import pandas as pd


def drop_duplicate_ratings(ratings: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Keep one rating per (user, movie): the latest, as a re-rating replaces the earlier one.

    Returns:
        The de-duplicated ratings (original row order) and the number of rows dropped.
    """
    latest_last = ratings.sort_values("timestamp", kind="stable")
    duplicated = latest_last.duplicated(["user_id", "movie_id"], keep="last")
    dropped = int(duplicated.sum())
    if not dropped:
        return ratings, 0
    return ratings.loc[~ratings.index.isin(latest_last.index[duplicated])], dropped


def quality_table(rows: list[tuple[str, int, str]]) -> pd.DataFrame:
    """A readable data-quality table from (check, count, note) rows."""
    return pd.DataFrame(rows, columns=["check", "count", "note"])
