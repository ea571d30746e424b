"""Training curves (recsys.training.curves): the kept epoch, the metric keys, the sentence and the figure."""

from __future__ import annotations

import pytest

from recsys.training.curves import TrainingCurve

HISTORY = {"loss": [9.0, 7.0, 6.5, 6.4], "val_recall_at_100": [0.20, 0.31, 0.29, 0.30]}


def test_the_kept_epoch_is_the_best_monitored_one_counted_from_one():
    curve = TrainingCurve.of(HISTORY, "val_recall_at_100")
    assert list(curve.table.index) == [1, 2, 3, 4]
    assert curve.best_epoch == 2
    assert curve.metrics("two_tower", 12.5) == {"two_tower_best_epoch": 2, "two_tower_train_s": 12.5}
    sentence = curve.describe(12.5, 1234.4, "positives")
    assert (
        "4 epochs in 12.5 s (1,234 positives/s)" in sentence and "best epoch 2 (val_recall_at_100 0.3100)" in sentence
    )


def test_a_history_without_the_monitored_metric_is_refused():
    with pytest.raises(KeyError, match="val_recall_at_10"):
        TrainingCurve.of({"loss": [1.0, 0.5]}, "val_recall_at_10")


def test_the_figure_has_the_loss_and_the_metric_with_the_others_beside():
    import matplotlib

    matplotlib.use("Agg")
    curve = TrainingCurve.of(HISTORY, "val_recall_at_100")
    other = TrainingCurve.of({"loss": [5.0, 4.0], "val_recall_at_100": [0.1, 0.2]}, "val_recall_at_100")
    fig = curve.figure("Training loss", "sequential", others={"two-tower": other})
    loss_axis, metric_axis = fig.axes
    assert list(loss_axis.lines[0].get_ydata()) == HISTORY["loss"]
    assert [line.get_label() for line in metric_axis.lines[:2]] == ["sequential", "two-tower"]
    assert metric_axis.lines[2].get_xdata()[0] == 2  # the kept epoch, marked
    assert metric_axis.get_legend() is not None
