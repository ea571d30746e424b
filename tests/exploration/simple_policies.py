"""Policies for the simulation's own tests, in a module that imports no TensorFlow.

`simulate_worlds` with processes pickles the policies' maker, so a spawned process imports the
module that defines it: this one costs it under a second, where the test module (which imports the
pipeline's policies, and with them TensorFlow) would cost several.
"""

from __future__ import annotations

import numpy as np

from recsys.evaluation import metrics
from recsys.exploration.simulation import PolicyLog, random_unseen


class LowestIdsPolicy:
    """The k unseen movies with the lowest catalogue columns (the tiny world's hidden model favours them)."""

    def update(self, log: PolicyLog) -> None:
        pass

    def recommend(self, log: PolicyLog, k: int, rng: np.random.Generator) -> np.ndarray:
        scores = np.broadcast_to(
            -np.arange(len(log.movie_ids), dtype=np.float32), (len(log.active), len(log.movie_ids))
        )
        return metrics.top_k_from_scores(scores, k, exclude=log.matrix[log.active])


class UniformPolicy:
    """k movies drawn uniformly among the user's unseen ones (its generator: the simulation's)."""

    def update(self, log: PolicyLog) -> None:
        pass

    def recommend(self, log: PolicyLog, k: int, rng: np.random.Generator) -> np.ndarray:
        return random_unseen(log, k, rng)


class SimplePolicies:
    """A picklable maker of fresh `LowestIdsPolicy` and `UniformPolicy` policies."""

    def __call__(self) -> dict[str, object]:
        return {"lowest_ids": LowestIdsPolicy(), "uniform": UniformPolicy()}
