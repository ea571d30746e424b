"""The joint model's weight sweep: a fit per (w_rating, w_retrieval), the setting chosen on val, the trade-off figure,
the chosen setting against the two specialists, and the metrics the multitask notebook writes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from recsys.models.multitask_model import MultitaskConfig, TaskWeights
from recsys.training.multitask_training import (
    MultitaskData,
    MultitaskResult,
    evaluate_on_test,
    refit_on_train_val,
    train_multitask_model,
)

RECALL_SHARE = 0.98  # the target: at least this share of the retrieval specialist's Recall@100


@dataclass
class SweepResult:
    """The weight sweep: a row per setting, and the fits behind them.

    `table` is indexed by setting ("w_rating,w_retrieval"): w_rating, w_retrieval, best_epoch, epochs,
    train_s, val_rmse, val_recall_at_100 and, scored on test, test_fitted_on and the test rmse, mae,
    recall_at_10, recall_at_100, ndcg_at_10. `fits`: setting -> its early-stopped fit on train;
    `refits`: -> its refit on train + val (when the sweep refits).
    """

    table: pd.DataFrame
    fits: dict[str, MultitaskResult]
    refits: dict[str, MultitaskResult]


def sweep(weight_pairs: Sequence, config: MultitaskConfig, data: MultitaskData, seed: int, test=True, refit=False):
    """Train one joint model per (w_rating, w_retrieval) setting on train, early-stopped on val, all with `seed`.

    Args:
        weight_pairs: the settings, e.g. [(1, 0), (0, 1), (1, 0.1)]; each checked by `TaskWeights`.
        test: also score each setting on test (once; nothing is chosen on it).
        refit: score test with each setting's refit on train + val for its kept epochs (the rating
            models' protocol; about twice the training time), instead of its fit on train.

    Raises:
        ValueError: no settings, a setting given twice, or invalid weights.
    """
    settings = [TaskWeights.of(pair) for pair in weight_pairs]
    labels = [w.label for w in settings]
    if not settings or len(set(labels)) != len(labels):
        raise ValueError(f"the sweep needs distinct weight pairs, got {labels}")
    rows, fits, refits = [], {}, {}
    for w in settings:
        fit = fits[w.label] = train_multitask_model(config, w, data, seed)
        row = {"setting": w.label, "w_rating": w.rating, "w_retrieval": w.retrieval, "best_epoch": fit.best_epoch}
        row.update(epochs=len(fit.history["loss"]), train_s=fit.wall_s, val_rmse=fit.val_rmse)
        row.update(val_recall_at_100=fit.val_recall_at_100)
        if test:
            scored = refits[w.label] = refit_on_train_val(config, w, data, seed, fit.best_epoch) if refit else fit
            row.update(test_fitted_on="train+val" if refit else "train", **evaluate_on_test(scored.model, data))
        rows.append(row)
    return SweepResult(pd.DataFrame(rows).set_index("setting"), fits, refits if refit else {})


@dataclass
class SweepChoice:
    """The setting chosen on val (`label`, `weights`), whether it met the RMSE tolerance, why, and the table.

    `table` is the sweep table with val_rmse_gap (to the rating specialist), val_recall_ratio (to
    the retrieval specialist), within_rmse_tolerance and meets_recall_target (RECALL_SHARE).
    """

    label: str
    weights: TaskWeights
    qualified: bool
    reason: str
    table: pd.DataFrame


def choose_on_val(
    table: pd.DataFrame,
    rmse_tolerance: float = 0.005,
    specialist_val_rmse: float | None = None,
    specialist_val_recall: float | None = None,
) -> SweepChoice:
    """The setting to keep: within `rmse_tolerance` val RMSE of the rating specialist, the highest val Recall@100.

    Ties go to the lower val RMSE, then to the earlier row. If no setting qualifies, the lowest val
    RMSE is chosen (the closest to qualifying), and the reason says so.

    Args:
        table: `SweepResult.table`.
        specialist_val_rmse: the rating specialist's val RMSE; None takes the sweep's rating-only row.
        specialist_val_recall: the retrieval specialist's val Recall@100; None takes the retrieval-only row.

    Raises:
        ValueError: a specialist is not given and the sweep has no row for it (or no rows at all).
    """
    rating_only, retrieval_only = table[table["w_retrieval"] == 0], table[table["w_rating"] == 0]
    if (specialist_val_rmse is None and rating_only.empty) or (specialist_val_recall is None and retrieval_only.empty):
        raise ValueError(
            "choose_on_val needs each specialist's val value, given or from a sweep row of its own "
            "(w_retrieval = 0 for the rating specialist, w_rating = 0 for the retrieval specialist)"
        )
    rmse_ref = float(rating_only["val_rmse"].iloc[0] if specialist_val_rmse is None else specialist_val_rmse)
    recall_ref = float(
        retrieval_only["val_recall_at_100"].iloc[0] if specialist_val_recall is None else specialist_val_recall
    )
    out = table.assign(val_rmse_gap=table["val_rmse"] - rmse_ref)
    out["val_recall_ratio"] = out["val_recall_at_100"] / recall_ref
    out["within_rmse_tolerance"] = out["val_rmse_gap"] <= rmse_tolerance
    out["meets_recall_target"] = out["within_rmse_tolerance"] & (out["val_recall_ratio"] >= RECALL_SHARE)
    order = np.lexsort((np.arange(len(out)), out["val_rmse"].to_numpy(), -out["val_recall_at_100"].to_numpy()))
    qualifying = [i for i in order if out["within_rmse_tolerance"].iloc[i]]
    tolerance = f"within {rmse_tolerance} val RMSE of the rating specialist ({rmse_ref:.4f})"
    if qualifying:
        label = out.index[qualifying[0]]
        ratio = out.loc[label, "val_recall_ratio"]
        reason = f"{len(qualifying)} of {len(out)} settings lie {tolerance}; {label} has the highest val Recall@100 "
        reason += f"among them, {ratio:.3f} x the retrieval specialist's {recall_ref:.4f}"
    else:
        label = out["val_rmse"].idxmin()
        reason = f"no setting lies {tolerance}; fallback: {label}, the lowest val RMSE ({out['val_rmse'].min():.4f})"
    return SweepChoice(str(label), TaskWeights.of(str(label)), bool(qualifying), reason, out)


def tradeoff_figure(
    table, split="val", rating_specialist=None, retrieval_specialist=None, rmse_tolerance=0.005, chosen=None
):
    """RMSE against Recall@100, each setting a labelled point, the specialists as reference lines; a Figure.

    The rating specialist's RMSE is a vertical line (its tolerance dotted), the retrieval
    specialist's Recall@100 a horizontal one (RECALL_SHARE of it dotted): a setting in the shaded
    corner meets the target. A setting far to the right (a retrieval-only model rates poorly) is
    drawn at the edge, its RMSE in its label.

    Args:
        table: `SweepResult.table` (or `SweepChoice.table`).
        split: "val" (val_rmse, val_recall_at_100) or "test" (rmse, recall_at_100).
        rating_specialist, retrieval_specialist: their RMSE and Recall@100 on `split` (None: no line).
        chosen: the chosen setting, ringed.
    """
    import matplotlib.pyplot as plt

    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    columns = ("val_rmse", "val_recall_at_100") if split == "val" else ("rmse", "recall_at_100")
    x, y = (table[c].astype(float) for c in columns)
    low = min(x.min(), rating_specialist if rating_specialist is not None else np.inf)
    right = low + max(0.05, 4 * rmse_tolerance)
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for label in table.index:
        px, far = min(x[label], right), x[label] > right
        ax.plot(px, y[label], ">" if far else "o", color="#4C72B0", ms=8)
        text = f"{label} (RMSE {x[label]:.2f})" if far else label
        ax.annotate(text, (px, y[label]), textcoords="offset points", xytext=(6, 6), fontsize=9)
        if label == chosen:
            ax.plot(px, y[label], "o", ms=16, mfc="none", mec="#C44E52", mew=2, label=f"chosen: {label}")
    rating, retrieval = rating_specialist, retrieval_specialist
    if rating is not None:
        ax.axvline(rating, color="#55A868", ls="--", label=f"rating specialist {rating:.4f}")
        ax.axvline(rating + rmse_tolerance, color="#55A868", ls=":", label=f"+ {rmse_tolerance}")
    if retrieval is not None:
        ax.axhline(retrieval, color="#8172B2", ls="--", label=f"retrieval specialist {retrieval:.4f}")
        ax.axhline(RECALL_SHARE * retrieval, color="#8172B2", ls=":", label=f"{RECALL_SHARE} x")
        if rating is not None:
            corner = [low - 2 * rmse_tolerance, rating + rmse_tolerance]
            ax.fill_between(corner, RECALL_SHARE * retrieval, max(y.max(), retrieval), alpha=0.1)
    ax.set_xlim(low - 2 * rmse_tolerance, right + 0.3 * (right - low))
    ax.set(xlabel=f"{split} RMSE (lower is better)", ylabel=f"{split} Recall@100 (higher is better)")
    ax.set_title(f"Joint model: one point per (w_rating, w_retrieval), {split} split")
    ax.legend(fontsize=8, loc="center right")  # the corners sit top left (mixes), top right and bottom left
    return fig


def multitask_metrics(result: SweepResult, choice: SweepChoice, chosen_test: dict[str, float], epochs: int) -> dict:
    """metrics.json entries: the chosen setting's test scores (`<metric>_multitask`), its weights, and each setting's.

    Args:
        chosen_test: `evaluate_on_test` of the chosen setting's served model (its refit on train + val).
        epochs: the epochs it was trained for.
    """
    names = ("rmse", "mae", "recall_at_10", "recall_at_100", "ndcg_at_10")
    out: dict[str, Any] = {f"{name}_multitask": float(chosen_test[name]) for name in names}
    out.update(multitask_weights=choice.label, multitask_epochs=int(epochs), multitask_qualified=int(choice.qualified))
    for label, row in result.table.iterrows():
        key = TaskWeights.of(str(label)).key
        out[f"val_rmse_multitask_{key}"] = float(row["val_rmse"])
        out[f"val_recall_at_100_multitask_{key}"] = float(row["val_recall_at_100"])
        out[f"multitask_best_epoch_{key}"] = int(row["best_epoch"])
        out.update({f"{name}_multitask_{key}": float(row[name]) for name in names[:1] + names[2:] if name in row})
    return out


def against_specialists(
    table: pd.DataFrame, label: str, refit_test: dict[str, float], specialist: dict[str, float], rmse_tolerance: float
) -> pd.DataFrame:
    """The chosen setting against the two specialists on test, each on the footing of the one it is compared with.

    RMSE: its refit on train + val against the rating model's refit (04's served `rating_model`).
    Recall@100: its fit on train (the sweep's test row) against the served two-tower, also fitted
    on train. A row per target: joint, specialist, what each was fitted on, the gap or ratio, the
    target and whether it is met. Nothing here is chosen: the setting was chosen on val.

    Args:
        table: `SweepResult.table` with its test columns (a sweep with test=True, refit=False).
        label: the chosen setting; refit_test: `evaluate_on_test` of its refit.
        specialist: `specialists(...)` (keys rmse, recall_at_100).
    """
    if table.loc[label].get("test_fitted_on") != "train":
        raise ValueError(f"the sweep's test row of {label} must be its fit on train (run the sweep with refit=False)")
    rmse, recall = float(refit_test["rmse"]), float(table.loc[label, "recall_at_100"])
    rows = [
        ("test RMSE", rmse, specialist["rmse"], "train+val", rmse - specialist["rmse"], f"gap <= {rmse_tolerance}"),
        (
            "test Recall@100",
            recall,
            specialist["recall_at_100"],
            "train",
            recall / specialist["recall_at_100"],
            f"ratio >= {RECALL_SHARE}",
        ),
    ]
    out = pd.DataFrame(rows, columns=["metric", "joint", "specialist", "both fitted on", "gap or ratio", "target"])
    out["met"] = [rows[0][4] <= rmse_tolerance, rows[1][4] >= RECALL_SHARE]
    return out.set_index("metric")
