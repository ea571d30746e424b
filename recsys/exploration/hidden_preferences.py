"""The closed-loop simulation's worlds: hidden preference models of two families, calibrated on test hits only.

A hidden preference model gives each (user, movie) an acceptance probability
P = sigmoid(slope * z + offset), z the model's scores standardised per user. It is fitted on every
interaction of the run (the truth the simulation knows and no policy sees), by one of
HIDDEN_MODELS:

- "ease": EASE (Steck 2019), an item-item model;
- "puresvd": PureSVD (Cremonesi et al. 2010), a truncated SVD of the binary matrix, z = X V Vᵀ: a
  low-rank factor model, another family, so a policy built on EASE is not judged only by a copy of
  itself.

Calibration (`calibrate`) matches two rates measured on data no served model was fitted or
selected on: the test split. The simulation starts from what the served system knows (train +
val); the served policy's round-0 lists, built from that, are accepted at the rate their movies
are among the user's test movies (`measured_rates`), and random unseen movies at the rate a random
unseen movie is a test movie.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import optimize, special
from scipy.sparse.linalg import svds

from recsys.evaluation import metrics
from recsys.evaluation.full_ranking import overlap_at_k
from recsys.exploration.reranking import standardise_rows
from recsys.exploration.simulation import PolicyLog, random_unseen
from recsys.models.ease import EASE

HIDDEN_MODELS = ("ease", "puresvd")


@dataclass(frozen=True, repr=False)
class HiddenPreferences:
    """The simulation's ground truth: P(accept) = sigmoid(slope * z + offset) of every (user row, catalogue column).

    Attributes:
        z: (n_users, n_movies) the hidden model's scores, standardised per user.
        slope, offset: from `calibrate`.
        name: the hidden model (HIDDEN_MODELS).
    """

    z: np.ndarray
    slope: float
    offset: float
    name: str = "ease"

    def __repr__(self) -> str:  # never print 20M numbers into a report
        return (
            f"HiddenPreferences({self.name}: {self.z.shape[0]:,} users x {self.z.shape[1]:,} movies, "
            f"slope={self.slope:.3f}, offset={self.offset:.3f})"
        )

    def probability(self, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """Acceptance probabilities of the (rows[i], columns[i, j]) pairs: shape of `columns`."""
        return special.expit(self.z[np.asarray(rows)[:, None], columns] * self.slope + self.offset)


def calibrate(
    z: np.ndarray,
    reference: np.ndarray,
    reference_rate: float,
    background: np.ndarray,
    background_rate: float,
) -> tuple[float, float]:
    """(slope, offset) so that P = sigmoid(slope * z + offset) reproduces two measured rates.

    Args:
        z: (n_users, n_movies) standardised hidden scores.
        reference: (n_users, k) columns of lists whose acceptance rate was measured (the served lists).
        reference_rate: their mean acceptance (e.g. the share of served movies the user watched later).
        background: (n_users, m) columns of movies drawn at random among each user's unseen ones.
        background_rate: their mean acceptance (the share of a user's unseen movies watched later).

    For a slope, the offset that gives `reference_rate` is unique (the mean is increasing in it);
    the slope is then the one whose background rate matches: both by Brent's method.

    Raises:
        ValueError: a rate outside (0, 1), background_rate >= reference_rate, or no slope in
            [0.01, 20] matches (the two rates cannot come from these scores).
    """
    for name, rate in (("reference_rate", reference_rate), ("background_rate", background_rate)):
        if not 0 < rate < 1:
            raise ValueError(f"{name} must be in (0, 1), got {rate}")
    if background_rate >= reference_rate:
        raise ValueError(
            f"background_rate {background_rate:.4f} >= reference_rate {reference_rate:.4f}: the reference lists "
            "must be accepted more often than random movies for a preference model to separate them"
        )
    rows = np.arange(len(z))[:, None]
    ref, back = z[rows, reference].astype(np.float64), z[rows, background].astype(np.float64)

    def offset_for(slope: float) -> float:
        reach = slope * np.abs(ref).max() + 50  # beyond it every probability is 0 or 1
        return optimize.brentq(lambda c: special.expit(slope * ref + c).mean() - reference_rate, -reach, reach)

    def background_gap(slope: float) -> float:
        return special.expit(slope * back + offset_for(slope)).mean() - background_rate

    low, high = 0.01, 20.0
    if np.sign(background_gap(low)) == np.sign(background_gap(high)):
        raise ValueError(
            f"no slope in [{low}, {high}] gives background rate {background_rate:.4f} with reference rate "
            f"{reference_rate:.4f}: the hidden scores do not separate the reference lists from random movies"
        )
    slope = optimize.brentq(background_gap, low, high, xtol=1e-6)
    return float(slope), float(offset_for(slope))


@dataclass(frozen=True, repr=False)
class Calibration:
    """What a hidden model was calibrated on (`hidden_preferences`).

    Attributes:
        reference_rate, background_rate: the two measured rates (`measured_rates`).
        background: (n_active, m) columns of random unseen movies per simulated user, where the
            background rate is matched.
        observed: (n_active,) which simulated users both rates were measured and matched on (`observed`).
    """

    reference_rate: float
    background_rate: float
    background: np.ndarray
    observed: np.ndarray


def measured_rates(everything: sp.csr_matrix, start: PolicyLog, reference: np.ndarray) -> tuple[float, float]:
    """(reference rate, background rate): how often the simulated users watched, after the start, what they were offered.

    Args:
        everything: binary (n_users, n_movies) matrix of every interaction of the run (every split).
        start: the log of round 0 (train + val); its active rows are the simulated users.
        reference: (n_active, k) columns of lists built from the start alone (the served list of round 0).

    Returns:
        The reference rate: the share of the reference lists' movies that are among the user's later
        movies (not in the start: the test split); the background rate: per user, later movies over
        unseen movies, averaged over the users: the rate of a random unseen movie. Both over the
        `observed` users only: a user with no later movie (possible on a global time split, where
        some users stop before the test period) says nothing of what an active user accepts.
    """
    held_out = later_movies(everything, start)
    seen_later = observed(everything, start)
    if not seen_later.any():
        raise ValueError("no simulated user has a movie after the start: nothing to calibrate on")
    hits = held_out[np.arange(len(start.active))[:, None], reference].toarray()
    reference_rate = float(hits[seen_later].mean())
    unseen = len(start.movie_ids) - np.diff(start.matrix[start.active].indptr)
    background_rate = float((np.diff(held_out.indptr) / unseen)[seen_later].mean())
    return reference_rate, background_rate


def later_movies(everything: sp.csr_matrix, start: PolicyLog) -> sp.csr_matrix:
    """Each simulated user's movies after the start (the test split), rows aligned with `start.active`."""
    held_out = (everything - start.matrix).tocsr()[start.active]
    held_out.eliminate_zeros()
    return held_out


def observed(everything: sp.csr_matrix, start: PolicyLog) -> np.ndarray:
    """Which simulated users (rows of `start.active`) have at least one movie after the start: the calibration's users."""
    return np.diff(later_movies(everything, start).indptr) > 0


def hidden_scores(everything: sp.csr_matrix, model: str, ease_l2: float, svd_rank: int, seed: int) -> np.ndarray:
    """(n_users, n_movies) float32 scores of a hidden model fitted on `everything`, standardised per user.

    Args:
        everything: binary users x catalogue matrix of every interaction of the run.
        model: one of HIDDEN_MODELS.
        ease_l2: EASE's penalty ("ease").
        svd_rank: the factors of PureSVD ("puresvd"), below min(n_users, n_movies).
        seed: ARPACK's start vector ("puresvd"), so the factors are reproducible.
    """
    if model == "ease":
        scores = EASE(ease_l2).fit(everything).score(everything)
    elif model == "puresvd":
        if not 0 < svd_rank < min(everything.shape):
            raise ValueError(f"simulation.hidden_svd_rank must be in 1..{min(everything.shape) - 1}, got {svd_rank}")
        matrix = sp.csr_matrix(everything, dtype=np.float64)
        _, _, vt = svds(matrix, k=svd_rank, random_state=np.random.default_rng(seed))
        scores = (matrix @ vt.T) @ vt
    else:
        raise ValueError(f"hidden model must be one of {HIDDEN_MODELS}, got {model!r}")
    return standardise_rows(np.asarray(scores, np.float32))


def hidden_preferences(
    everything: sp.csr_matrix,
    start: PolicyLog,
    reference: np.ndarray,
    model: str,
    *,
    ease_l2: float,
    svd_rank: int,
    background_size: int,
    seed: int,
) -> tuple[HiddenPreferences, Calibration]:
    """One simulation world: a hidden model fitted on every interaction, calibrated on the test hits.

    Args:
        everything: binary users x catalogue matrix of every interaction of the run (every split).
        start: the log of round 0 (train + val); its active rows are the simulated users.
        reference: (n_active, k) columns the served policy lists from `start` (matched to the reference rate).
        model, ease_l2, svd_rank: the hidden model (`hidden_scores`).
        background_size: random unseen movies drawn per user (matched to the background rate); the
            draw depends on `seed` only, so every hidden model is matched on the same movies.
        seed: seeds that draw and the hidden model.

    Returns:
        (the hidden preferences of every user of `start`, what they were calibrated on).
    """
    z = hidden_scores(everything, model, ease_l2, svd_rank, seed)
    reference_rate, background_rate = measured_rates(everything, start, reference)
    background = random_unseen(start, background_size, np.random.default_rng(seed))
    rows = observed(everything, start)  # the users the rates were measured on
    slope, offset = calibrate(z[start.active][rows], reference[rows], reference_rate, background[rows], background_rate)
    return HiddenPreferences(z, slope, offset, model), Calibration(reference_rate, background_rate, background, rows)


def calibrated_worlds(
    everything: sp.csr_matrix,
    start: PolicyLog,
    reference: np.ndarray,
    models: Sequence[str],
    *,
    ease_l2: float,
    svd_rank: int,
    background_size: int,
    seed: int,
) -> dict[str, tuple[HiddenPreferences, Calibration]]:
    """`hidden_preferences` of each of `models`, calibrated the same way (same rates, same background movies)."""
    unknown = sorted(set(models) - set(HIDDEN_MODELS))
    if unknown or not models:
        raise ValueError(f"simulation.hidden_models must name some of {HIDDEN_MODELS}, got {list(models)}")
    return {
        model: hidden_preferences(
            everything,
            start,
            reference,
            model,
            ease_l2=ease_l2,
            svd_rank=svd_rank,
            background_size=background_size,
            seed=seed,
        )
        for model in models
    }


def calibration_table(
    worlds: Mapping[str, tuple[HiddenPreferences, Calibration]], start: PolicyLog, reference: np.ndarray
) -> pd.DataFrame:
    """One row per hidden model: slope, offset, each calibrated rate as measured on test and as the model gives it,
    and the overlap@10 of its top 10 unseen movies with the first model's (how different the worlds are)."""
    rows, first_top = {}, None
    for name, (world, calibration) in worlds.items():
        top = metrics.top_k_from_scores(world.z[start.active], 10, exclude=start.matrix[start.active])
        first_top = top if first_top is None else first_top
        matched = start.active[calibration.observed]  # the users both rates were matched on
        rows[name] = {
            "slope": world.slope,
            "offset": world.offset,
            "served round 0, measured (test)": calibration.reference_rate,
            "served round 0, model": float(world.probability(matched, reference[calibration.observed]).mean()),
            "random unseen, measured (test)": calibration.background_rate,
            "random unseen, model": float(
                world.probability(matched, calibration.background[calibration.observed]).mean()
            ),
            "users calibrated on": int(calibration.observed.sum()),
            "top-10 overlap with the first": overlap_at_k(top, first_top, 10),
        }
    return pd.DataFrame(rows).T
