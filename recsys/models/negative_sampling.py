"""Negatives beyond the batch for the two-tower retrieval model: the catalogue, seeded draws, mixed logQ, BPR."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf


@dataclass(frozen=True)
class NegativeCatalogue:
    """The movies sampled negatives are drawn from, as the candidate tower reads them.

    Only movies with an id row of their own (encoded id > 0, i.e. with training positives when the
    encoder was fitted): a movie without one shares the unknown row, which `build_retrieval_model`
    keeps at zero so such a movie is scored by its features alone; a sampled negative's gradient
    would move it.

    Attributes:
        inputs: candidate-tower inputs of every catalogue movie, one row each (`FeatureEncoder.movie_inputs`).
        share: each movie's share of the training positives (the in-batch candidates' sampling
            probability, `retrieval_training.candidate_sampling_probability`); 0 for none.
        seed: the run's seed; with the training step (and the replica) it seeds each step's draws.
    """

    inputs: dict[str, np.ndarray]
    share: np.ndarray
    seed: int

    def __post_init__(self):
        sizes = {name: len(value) for name, value in self.inputs.items()}
        if "movie_id" not in self.inputs or set(sizes.values()) != {len(self.share)} or not len(self.share):
            raise ValueError(f"a negative catalogue needs movie_id and one row per movie in each input: {sizes}")
        if (np.asarray(self.inputs["movie_id"]) <= 0).any():
            raise ValueError("a negative catalogue holds only movies with an id row (encoded id > 0)")


class SamplingTables:
    """A `NegativeCatalogue` as constant tensors inside the model, so every replica of a distributed step has it.

    Plain constants (not variables): they are no weights, so nothing is saved, restored or
    all-reduced, and a worker building the same catalogue from the same tables gets the same draws.

    Args:
        catalogue: the movies to draw from.
        alpha: popularity exponent of `popularity_rows` (movies are drawn in proportion to share ** alpha).
    """

    def __init__(self, catalogue: NegativeCatalogue, alpha: float):
        self.inputs = {name: tf.constant(value) for name, value in catalogue.inputs.items()}
        self.movie_ids = self.inputs["movie_id"]
        self.share = tf.constant(catalogue.share, tf.float32)
        self.n_movies = len(catalogue.share)
        self.seed = int(catalogue.seed)
        self.cdf = tf.constant(popularity_cdf(catalogue.share, alpha), tf.float32)

    def movie_inputs(self, rows: tf.Tensor) -> dict[str, tf.Tensor]:
        """The candidate-tower inputs of catalogue rows `rows`."""
        return {name: tf.gather(value, rows) for name, value in self.inputs.items()}


def popularity_cdf(share: np.ndarray, alpha: float) -> np.ndarray:
    """Cumulative distribution over catalogue rows of share ** alpha (movies without positives: 0), ending at exactly 1.

    Raises:
        ValueError: no movie has a positive share.
    """
    share = np.asarray(share, np.float64)
    weights = np.where(share > 0, np.power(share, alpha, where=share > 0, out=np.zeros_like(share)), 0.0)
    if not (weights > 0).any():
        raise ValueError("no catalogue movie has training positives to draw popular negatives from")
    cdf = np.cumsum(weights) / weights.sum()
    cdf[np.flatnonzero(weights)[-1] :] = 1.0  # a draw u < 1 never lands past the last movie with a weight
    return cdf


def step_seed(seed: int, step: tf.Tensor | int) -> tf.Tensor:
    """The stateless seed of one training step: (seed, step) folded with the replica id.

    Each step draws new negatives, each replica of a distributed step its own, and a rerun with the
    same seed (or a job resumed at the same step) draws the same ones.
    """
    base = tf.stack([tf.constant(seed, tf.int64), tf.cast(step, tf.int64)])
    context = tf.distribute.get_replica_context()
    replica = 0 if context is None else context.replica_id_in_sync_group
    return tf.random.experimental.stateless_fold_in(base, tf.cast(replica, tf.int64))


def uniform_rows(count: tf.Tensor | int, n_movies: int, seed: tf.Tensor) -> tf.Tensor:
    """`count` catalogue rows drawn uniformly with replacement (int32)."""
    return tf.random.stateless_uniform(tf.reshape(count, [1]), seed, minval=0, maxval=n_movies, dtype=tf.int32)


def popularity_rows(shape: tf.Tensor, cdf: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Catalogue rows of the given shape drawn with replacement from `cdf` (`popularity_cdf`), by inverse CDF.

    A binary search per draw (not `tf.random.categorical`, whose cost per draw grows with the catalogue).
    """
    draws = tf.random.stateless_uniform(shape, seed, dtype=tf.float32)
    # UpperBound (searchsorted, side right) on explicit [1, n] rows: tf.searchsorted cannot reshape zero draws
    rows = tf.raw_ops.UpperBound(sorted_inputs=cdf[None, :], values=tf.reshape(draws, [1, -1]), out_type=tf.int32)
    return tf.reshape(tf.minimum(rows, tf.size(cdf) - 1), shape)


def mixed_sampling_probability(batch_share: tf.Tensor, sampled_share: tf.Tensor, n_movies: int) -> tf.Tensor:
    """Each candidate's probability under mixed negative sampling, for the logQ correction.

    The candidates of a batch of B positives with M uniform draws appended are B draws from the
    positives' distribution p (each movie's share of the training positives) and M draws from the
    uniform 1/n over the catalogue: a candidate column is a draw from the mixture
    q(y) = (B p(y) + M / n) / (B + M), proportional to the expected number of times y is among
    the candidates. Sampled softmax subtracts log q(y) from every column holding y, whichever of
    the two samplers put it there (Bengio and Senecal 2008; Yi et al. 2019 for in-batch, where
    M = 0 and q = p). The uniform draws lift the tail movies that in-batch sampling almost never
    offers as negatives (Yang et al. 2020); correcting them by p alone would over-correct them.

    Args:
        batch_share: p of the B in-batch candidates (the per-example sampling probability).
        sampled_share: p of the M uniform draws (0 for movies without training positives).
        n_movies: n, the size of the catalogue the uniform draws come from.

    Returns:
        (B + M,) float32 q of the columns, in-batch candidates first.
    """
    b = tf.cast(tf.size(batch_share), tf.float32)
    m = tf.cast(tf.size(sampled_share), tf.float32)
    share = tf.concat([tf.cast(batch_share, tf.float32), tf.cast(sampled_share, tf.float32)], axis=0)
    return (b * share + m / n_movies) / tf.maximum(b + m, 1.0)


def bpr_loss(
    queries: tf.Tensor,
    positives: tf.Tensor,
    negatives: tf.Tensor,
    positive_ids: tf.Tensor,
    negative_ids: tf.Tensor,
    temperature: float | None,
) -> tf.Tensor:
    """BPR's loss, summed: sum over positives and their negatives of -log sigmoid(s_pos - s_neg) (Rendle et al. 2009).

    Scores are dot products divided by `temperature`, as in the softmax variants (with
    L2-normalised towers a cosine difference lies in [-2, 2], where the sigmoid barely moves).
    A negative that is the positive's own movie is masked out (it would add log 2 and no gradient).
    A sum, not a mean: per-replica sums add up to the global batch's loss (the codebase's convention).

    Args:
        queries: (B, d) query vectors; positives: (B, d) their positives' vectors.
        negatives: (B, K, d) each positive's K negatives.
        positive_ids, negative_ids: (B,) and (B, K) encoded movie ids, for the mask.
    """
    scale = 1.0 / (temperature or 1.0)
    positive_scores = tf.reduce_sum(queries * positives, axis=-1, keepdims=True) * scale
    negative_scores = tf.einsum("bd,bkd->bk", queries, negatives) * scale
    keep = tf.cast(tf.not_equal(negative_ids, tf.expand_dims(positive_ids, -1)), negative_scores.dtype)
    return tf.reduce_sum(tf.math.softplus(negative_scores - positive_scores) * keep)
