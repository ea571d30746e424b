"""A picklable maker of policies for the simulation's own tests, in a module that imports no TensorFlow.

`simulate_worlds` with processes pickles the policies' maker, so a spawned process imports the
module that defines it: this one costs it under a second, where the test module (which imports the
pipeline's two-stage policies, and with them TensorFlow) would cost several.
"""

from __future__ import annotations

from recsys.exploration.simulation import PopularityPolicy, RandomPolicy


class SimplePolicies:
    """Fresh popularity and random policies."""

    def __call__(self) -> dict[str, object]:
        return {"popularity": PopularityPolicy(), "random": RandomPolicy()}
