"""The baselines' rating protocol: choose on val, refit on train + val (unless told not to), score once on test."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from recsys.data.rating_scale import RatingScale
from recsys.models.baselines import RatingPredictor, best_row, evaluate_predictor, tune_on_val


def select_refit_evaluate(
    name: str,
    make_model: Callable[[dict], RatingPredictor],
    grid: Any,
    train: pd.DataFrame,
    val: pd.DataFrame,
    test: pd.DataFrame,
    scale: RatingScale,
    n_jobs: int = 1,
    refit: bool = True,
) -> tuple[dict, pd.DataFrame, RatingPredictor]:
    """Tune on val, refit the winner on train + val (or keep its train fit), score it once on test.

    Args:
        name: the model's name in the results table.
        make_model: builds an unfitted model from one grid point.
        grid: list of parameter dicts or dict of value lists (see baselines.expand_grid).
        scale: the dataset's rating scale (predictions are clipped to it).
        n_jobs: grid points fitted in parallel.
        refit: False scores the winner as fitted on train (no second fit): for a model whose fit
            takes minutes on a large release, where val is a small share of the ratings
            (`split.eval_users`). The grid is then fitted in this process, one point at a time
            (`n_jobs` is not used), and `fit_s` is the winner's fit on train.

    Returns:
        (a results row: model, params, rmse_val, rmse_test, mae_test, fit_s, predict_s; the tuning
        table; the scored model, for its test predictions)
    """
    if refit:
        best, tuning = tune_on_val(make_model, grid, train, val, scale, n_jobs=n_jobs)
        model = make_model(best)
        start = time.perf_counter()
        model.fit(pd.concat([train, val]))
        fit_s = time.perf_counter() - start
    else:
        best, tuning, model = tune_on_val(make_model, grid, train, val, scale, keep_best=True)
        fit_s = float(tuning["fit_s"].iloc[best_row(tuning)])
    scores = evaluate_predictor(model, test, scale)
    row = {
        "model": name,
        "params": best,
        "rmse_val": float(tuning["rmse_val"].min()),
        "rmse_test": scores["rmse"],
        "mae_test": scores["mae"],
        "fit_s": fit_s,
        "predict_s": scores["predict_s"],
    }
    return row, tuning, model


def evaluate_draws(
    name: str,
    makers: list[Callable[[], RatingPredictor]],
    train: pd.DataFrame,
    test: pd.DataFrame,
    scale: RatingScale,
) -> dict:
    """Fit and score a parameter-free model once per maker (one per seed) and average the scores.

    Randomised baselines differ from draw to draw; the mean over seeded draws (and its spread) is
    the honest number. A deterministic model is simply given one maker.
    """
    rows = []
    for make in makers:
        model = make()
        start = time.perf_counter()
        model.fit(train)
        fit_s = time.perf_counter() - start
        rows.append({**evaluate_predictor(model, test, scale), "fit_s": fit_s})
    table = pd.DataFrame(rows)
    return {
        "model": name,
        "params": {"draws": len(makers)},
        "rmse_val": np.nan,
        "rmse_test": float(table["rmse"].mean()),
        "mae_test": float(table["mae"].mean()),
        "rmse_test_std": float(table["rmse"].std(ddof=0)),
        "fit_s": float(table["fit_s"].mean()),
        "predict_s": float(table["predict_s"].mean()),
    }
