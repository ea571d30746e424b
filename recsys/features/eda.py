"""Findings of the exploratory analysis, computed from the data as small tables."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recsys.features.preprocessing import GENRES, UNKNOWN_GENRE, genre_column, genre_columns


def counts_by(frame: pd.DataFrame, column: str, sort_index: bool = True) -> pd.Series:
    """How many rows fall in each value of `column` (categories with no rows included)."""
    counts = frame[column].value_counts(sort=not sort_index, dropna=True)
    return counts.sort_index() if sort_index else counts


def extremes(counts: pd.Series) -> dict:
    """The most and least frequent value of a count series, with their shares of the total."""
    total = counts.sum()
    return {
        "most": counts.idxmax(),
        "most_share": float(counts.max() / total),
        "least": counts.idxmin(),
        "least_share": float(counts.min() / total),
    }


def share_table(counts: pd.Series, name: str = "count") -> pd.DataFrame:
    """Counts with their shares, largest first."""
    counts = counts.sort_values(ascending=False)
    return pd.DataFrame({name: counts, "share": counts / counts.sum()})


def geography(users: pd.DataFrame, interactions: pd.DataFrame, top: int = 10) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Users and ratings per state, and the top cities by users (unresolved ZIP codes left out).

    Returns:
        (states table: users, ratings, ratings per user; top cities table: users, ratings, state)
    """
    rated_users = users[users["user_id"].isin(interactions["user_id"])]
    states = (
        pd.DataFrame(
            {
                "users": rated_users.groupby("state").size(),
                "ratings": interactions.groupby("state").size(),
            }
        )
        .fillna(0)
        .astype(int)
        .sort_values("users", ascending=False)
    )
    states["ratings_per_user"] = states["ratings"] / states["users"].clip(lower=1)
    city_key = rated_users["city"] + ", " + rated_users["state"]
    city_ratings = interactions.groupby(interactions["city"] + ", " + interactions["state"]).size()
    cities = city_key.value_counts().head(top).rename("users").to_frame()
    cities["ratings"] = city_ratings.reindex(cities.index).fillna(0).astype(int)
    return states, cities


_GENRE_NAMES = {genre_column(name): name for name in (*GENRES, UNKNOWN_GENRE)}


def genre_popularity(interactions: pd.DataFrame) -> pd.DataFrame:
    """Ratings and mean rating per genre (a movie counts once for each of its genres)."""
    columns = genre_columns(interactions)
    flags = interactions[columns].to_numpy(dtype=np.float32)
    ratings = interactions["rating"].to_numpy(dtype=np.float32)
    n_ratings = flags.sum(axis=0)
    mean = (flags * ratings[:, None]).sum(axis=0) / np.maximum(n_ratings, 1)
    table = pd.DataFrame(
        {"ratings": n_ratings.astype(int), "mean_rating": mean},
        index=[_GENRE_NAMES.get(c, c.removeprefix("genre_")) for c in columns],
    )
    table["share_of_ratings"] = table["ratings"] / len(interactions)
    return table.sort_values("ratings", ascending=False)


def user_rating_bias(interactions: pd.DataFrame) -> pd.Series:
    """Each user's mean rating minus the global mean: how much harsher or kinder than average they are."""
    return (interactions.groupby("user_id")["rating"].mean() - interactions["rating"].mean()).rename("bias")


def correlation_ratio(categories: pd.Series, values: pd.Series) -> float:
    """Correlation ratio eta: the share of the variance of `values` explained by the categories (sqrt)."""
    frame = pd.DataFrame({"c": categories, "v": values.astype(float)}).dropna()
    grouped = frame.groupby("c", observed=True)["v"]
    between = (grouped.size() * (grouped.mean() - frame["v"].mean()) ** 2).sum()
    total = ((frame["v"] - frame["v"].mean()) ** 2).sum()
    return float(np.sqrt(between / total)) if total > 0 else 0.0


def feature_rating_association(interactions: pd.DataFrame) -> pd.DataFrame:
    """How strongly each feature goes with the rating.

    Numeric features get Pearson's r (signed), categorical ones the correlation ratio eta
    (0..1, unsigned; comparable to |r|), and each genre flag its point-biserial r. User
    attributes enter only where the release has them (none without a users file).
    """
    rating = interactions["rating"].astype(float)
    rows = []
    for column in ("year", "hour", "rating_year"):
        rows.append((column, "pearson r", float(interactions[column].astype(float).corr(rating))))
    user_columns = [c for c in ("gender", "age_group", "occupation", "state") if c in interactions.columns]
    for column in (*user_columns, "weekday_name", "month", "hour"):
        rows.append((column, "eta", correlation_ratio(interactions[column].astype(object), rating)))
    for column in genre_columns(interactions):
        rows.append((column, "point-biserial r", float(interactions[column].astype(float).corr(rating))))
    table = pd.DataFrame(rows, columns=["feature", "measure", "value"])
    return table.assign(strength=table["value"].abs()).sort_values("strength", ascending=False).drop(columns="strength")
