"""A release's rating scale: the lowest and highest rating and the step between levels, as one value."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RatingScale:
    """A release's ratings: the lowest and highest, and the step between levels (1: whole stars, 0.5: half).

    A property of the dataset (`movielens.DatasetSpec`; notebook runs read it from the `dataset`
    artifact): predictions are clipped to it, and the random baseline draws its levels.
    """

    low: float
    high: float
    step: float

    def __post_init__(self):
        steps = (self.high - self.low) / self.step if self.step > 0 else -1.0
        if not (self.low < self.high and steps > 0 and abs(steps - round(steps)) < 1e-9):
            raise ValueError(
                f"a rating scale needs low < high in whole steps, got {self.low}..{self.high} by {self.step}"
            )

    @property
    def bounds(self) -> tuple[float, float]:
        return (float(self.low), float(self.high))

    def clip(self, predictions) -> np.ndarray:
        """Predictions clipped to [low, high], as every rating metric scores them (float64)."""
        return np.clip(np.asarray(predictions, dtype=np.float64), self.low, self.high)

    def levels(self) -> np.ndarray:
        """Every rating on the scale, lowest first."""
        return self.low + self.step * np.arange(round((self.high - self.low) / self.step) + 1)

    def to_dict(self) -> dict:
        return {"rating_scale": list(self.bounds), "rating_step": float(self.step)}

    @classmethod
    def from_dict(cls, info: dict) -> RatingScale:
        """The scale of a `to_dict` (or of the run's `dataset` artifact, which holds the same keys)."""
        (low, high), step = info["rating_scale"], info["rating_step"]
        return cls(float(low), float(high), float(step))
