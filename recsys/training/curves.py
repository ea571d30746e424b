"""Training curves: a run's per-epoch history, the epoch early stopping kept, in a sentence and a figure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from recsys.training.callbacks import history_table


@dataclass
class TrainingCurve:
    """A training run's per-epoch logs (epoch from 1) and the metric its early stopping watched (higher is better).

    Attributes:
        table: `callbacks.history_table` of the run's history: `loss` and `monitored` per epoch.
        monitored: the history key early stopping watched, e.g. val_recall_at_100.
    """

    table: pd.DataFrame
    monitored: str

    @classmethod
    def of(cls, history: dict[str, list[float]], monitored: str) -> TrainingCurve:
        """The curve of a Keras history dict.

        Raises:
            KeyError: the history has no `loss` or no `monitored` key (e.g. trained without a monitor).
        """
        table = history_table(history)
        missing = [key for key in ("loss", monitored) if key not in table.columns]
        if missing:
            raise KeyError(f"the training history has no {missing}; it logs {list(table.columns)}")
        return cls(table, monitored)

    @property
    def best_epoch(self) -> int:
        """The epoch with the best monitored value: the one whose weights were kept."""
        return int(self.table[self.monitored].idxmax())

    def metrics(self, name: str, wall_s: float) -> dict[str, float]:
        """`<name>_best_epoch` and `<name>_train_s` (the wall time of the training run), as metric keys."""
        return {f"{name}_best_epoch": self.best_epoch, f"{name}_train_s": float(wall_s)}

    def describe(self, wall_s: float, per_s: float, unit: str) -> str:
        """The run in a sentence: epochs, wall time, throughput (`unit` per second) and the kept epoch."""
        return (
            f"trained {len(self.table)} epochs in {wall_s:.1f} s ({per_s:,.0f} {unit}/s); best epoch "
            f"{self.best_epoch} ({self.monitored} {self.table[self.monitored].max():.4f}), its weights kept"
        )

    def figure(self, title: str, label: str | None = None, others: Mapping[str, TrainingCurve] | None = None) -> Any:
        """Two panels: the training loss, and the monitored metric (with `others`' for comparison), the kept epoch marked.

        Args:
            title: the loss panel's title.
            label: this run's name in the legend (shown when `others` are given).
            others: name -> curves drawn beside this one in the metric panel.
        """
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(12, 3.5))
        ax[0].plot(self.table.index, self.table["loss"], "o-")
        ax[0].set(title=title, xlabel="epoch")
        ax[1].plot(self.table.index, self.table[self.monitored], "o-", color="#55A868", label=label)
        for name, other in (others or {}).items():
            ax[1].plot(other.table.index, other.table[other.monitored], "s--", label=name)
        ax[1].axvline(self.best_epoch, color="grey", ls="--")
        ax[1].set(title=f"{self.monitored} (the early-stopping metric)", xlabel="epoch")
        if others:
            ax[1].legend()
        for axis in ax:
            axis.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        return fig
