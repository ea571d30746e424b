"""Fold-in evaluation: users no model was trained on, given their first few ratings, scored on the rest.

A seeded share of users (`splits.foldin_users`) is kept out of every model of a run. Each is
given their first `n_given` ratings by time (the timeline of `splits.timeline_position`); every
model scores the catalogue from those alone (popularity ignores them, EASE multiplies them by
its item-item matrix, a history model reads them as its sequence), the given movies are
excluded, and the later ratings are what a list should hold: Recall@K and NDCG@K of
`recsys.evaluation.metrics`, as for the main protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.core.tables import require_columns
from recsys.evaluation import metrics
from recsys.evaluation.full_ranking import bootstrap_spread
from recsys.evaluation.score_blocks import RowScores, top_k_in_blocks
from recsys.features.sequences import pad_left


@dataclass
class FoldIn:
    """The fold-in users' given and held-out movies over the catalogue's columns.

    Attributes:
        user_ids: the fold-in users with more than `n_given` ratings, sorted.
        n_given: ratings given per user (their earliest).
        given: (n_users, n_movies) binary matrix of the given movies.
        rest: (n_users, n_movies) binary matrix of the later movies (the relevant ones).
        given_columns: (n_users, n_given) column indices of the given movies, oldest first.
    """

    user_ids: np.ndarray
    n_given: int
    given: sp.csr_matrix
    rest: sp.csr_matrix
    given_columns: np.ndarray

    def histories(self, length: int) -> np.ndarray:
        """The given movies as a history model reads them: (n_users, length) vocabulary indices
        (column + 1, PAD = 0), oldest first, left-padded (the latest `length` if n_given > length)."""
        return pad_left((self.given_columns + 1).astype(np.int32), length)

    def _top(self, scores: np.ndarray | RowScores, ks: Sequence[int]) -> np.ndarray:
        if scores.shape != self.given.shape:
            raise ValueError(f"scores have shape {scores.shape}; the fold-in users x catalogue is {self.given.shape}")
        return top_k_in_blocks(scores, max(ks), exclude=self.given)

    def evaluate(self, scores: np.ndarray | RowScores, ks: Sequence[int] = (10,)) -> dict[str, float]:
        """Recall/NDCG/hit rate at `ks` of a (n_users, n_movies) score matrix, the given movies excluded."""
        return metrics.retrieval_metrics(self._top(scores, ks), self.rest, ks)

    def per_user(self, scores: np.ndarray | RowScores, ks: Sequence[int] = (10,)) -> pd.DataFrame:
        """`evaluate` before averaging: one row per fold-in user (indexed by user_id), for bootstrap spreads."""
        values = metrics.per_user_retrieval_metrics(self._top(scores, ks), self.rest, ks)
        rows = values.pop("user_rows")
        return pd.DataFrame(values, index=pd.Index(self.user_ids[rows], name="user_id"))


def foldin_split(interactions: pd.DataFrame, movie_ids: np.ndarray, n_given: int) -> FoldIn:
    """Each fold-in user's first `n_given` ratings (by timeline position) given, the later ones held out.

    Args:
        interactions: the fold-in users' ratings (user_id, movie_id, position).
        movie_ids: the catalogue (the score matrices' columns).
        n_given: ratings given; users with no rating after them are left out.

    Raises:
        ValueError: n_given < 1, or a movie outside the catalogue.
    """
    if n_given < 1:
        raise ValueError(f"give at least one rating per fold-in user, got n_given={n_given}")
    require_columns(interactions, ("user_id", "movie_id", "position"), "fold-in interactions", ValueError)
    frame = interactions.sort_values(["user_id", "position"], kind="stable")
    columns = pd.Index(np.asarray(movie_ids)).get_indexer(frame["movie_id"])
    if (columns < 0).any():
        raise ValueError(
            f"fold-in ratings of movies outside the catalogue: {frame['movie_id'][columns < 0].unique()[:5]}"
        )
    users = frame["user_id"].to_numpy()
    rank = frame.groupby("user_id").cumcount().to_numpy()
    counts = frame["user_id"].value_counts()
    kept = np.sort(counts.index[counts > n_given].to_numpy())
    if not len(kept):
        raise ValueError(
            f"no fold-in user has more than {n_given} ratings ({counts.size} users): lower split.foldin_given "
            "or raise split.foldin_share"
        )
    rows = pd.Index(kept).get_indexer(users)
    in_kept = rows >= 0
    given_mask, rest_mask = in_kept & (rank < n_given), in_kept & (rank >= n_given)
    shape = (len(kept), len(movie_ids))
    given = metrics.build_interaction_matrix(rows[given_mask], columns[given_mask], *shape)
    rest = metrics.build_interaction_matrix(rows[rest_mask], columns[rest_mask], *shape)
    given_columns = columns[given_mask].reshape(len(kept), n_given)  # sorted by user, then time
    return FoldIn(kept, n_given, given, rest, given_columns)


@dataclass
class FoldInComparison:
    """Several models scored on the fold-in users, with bootstrap spreads and paired differences.

    Attributes:
        table: one row per (given, model): users, the mean of each per-user metric, and
            `<metric>_std`, the spread of `metric`'s mean over the bootstrap resamples.
        gaps: one row per (given, "a - b"): the mean of the per-user difference a - b of `metric`
            and its 95% bootstrap interval (low_2.5%, high_97.5%).
        metric: the metric the spreads and differences are given for (e.g. recall_at_10).
    """

    table: pd.DataFrame
    gaps: pd.DataFrame
    metric: str

    def metrics(self, also: Sequence[str] | None = None) -> dict[str, float]:
        """A flat record: `<metric>_foldin<given>_<model>` (with `_std`), the same for each of `also`
        (by default the NDCG at the metric's K), and `<metric>_foldin<given>_<a>_minus_<b>_low`/`_high`
        for each difference."""
        also = (self.metric.replace("recall_at_", "ndcg_at_"),) if also is None else also
        out = {}
        for (n_given, model), row in self.table.iterrows():
            out[f"{self.metric}_foldin{n_given}_{model}"] = float(row[self.metric])
            out[f"{self.metric}_foldin{n_given}_{model}_std"] = float(row[f"{self.metric}_std"])
            out.update({f"{name}_foldin{n_given}_{model}": float(row[name]) for name in also})
        for (n_given, gap), row in self.gaps.iterrows():
            name = f"{self.metric}_foldin{n_given}_{gap.replace(' - ', '_minus_')}"
            out[f"{name}_low"], out[f"{name}_high"] = float(row["low_2.5%"]), float(row["high_97.5%"])
        return out


def compare_foldin(
    interactions: pd.DataFrame,
    movie_ids: np.ndarray,
    scorers: Mapping[str, Callable[[FoldIn], np.ndarray | RowScores]],
    given: Sequence[int],
    gaps: Sequence[tuple[str, str]],
    n_resamples: int,
    seed: int,
    ks: Sequence[int] = (10, 100),
) -> FoldInComparison:
    """Every model scored on the fold-in users at each number of given ratings, with bootstrap spreads.

    Each model's lists are ranked once per `n_given`; the bootstrap resamples the users, the same
    resamples for every model and difference (paired), so a difference's interval says whether
    a gap between two models is larger than the resampling noise of a few hundred users.

    Args:
        interactions: the fold-in users' positives (user_id, movie_id, position).
        movie_ids: the catalogue (the scores' columns).
        scorers: model name -> a function of a `FoldIn` returning its (users x catalogue) scores.
        given: the numbers of earliest ratings given (`split.foldin_given`).
        gaps: pairs (a, b) of model names whose per-user difference a - b is resampled.
        n_resamples: bootstrap resamples of the users.
        seed: seeds the resampling.
        ks: list lengths; the spreads and differences are of Recall@ks[0].

    Raises:
        ValueError: a pair in `gaps` names a model that is not in `scorers`.
    """
    unknown = sorted({name for pair in gaps for name in pair} - set(scorers))
    if unknown:
        raise ValueError(f"gaps name models without a scorer: {unknown} (scorers: {sorted(scorers)})")
    metric = f"recall_at_{ks[0]}"
    rows, gap_rows = {}, {}
    for n_given in given:
        fold = foldin_split(interactions, movie_ids, n_given)
        per_user = {name: fold.per_user(score(fold), ks=ks) for name, score in scorers.items()}
        per_user.update({f"{a} - {b}": per_user[a] - per_user[b] for a, b in gaps})
        spread = bootstrap_spread(per_user, n_resamples, seed).set_index(["strategy", "metric"])
        for name in scorers:
            std = spread.loc[(name, metric), "std"]
            rows[(n_given, name)] = {"users": len(fold.user_ids), **per_user[name].mean(), f"{metric}_std": std}
        for a, b in gaps:
            gap_rows[(n_given, f"{a} - {b}")] = spread.loc[(f"{a} - {b}", metric), ["mean", "low_2.5%", "high_97.5%"]]
    table = pd.DataFrame(rows).T.rename_axis(["given", "model"])
    gap_table = pd.DataFrame(gap_rows).T.rename_axis(["given", f"{metric} difference"])
    return FoldInComparison(table, gap_table, metric)
