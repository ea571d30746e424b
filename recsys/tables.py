"""Checks on the DataFrames passed between steps, raised before any work with what is missing and what is there."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd


def require_columns(frame: pd.DataFrame, columns: Iterable[str], what: str, error: type[Exception] = KeyError) -> None:
    """Raise `error` naming the columns `frame` lacks (and TypeError if it is not a DataFrame).

    Args:
        frame: the table to check.
        columns: the columns it must have.
        what: how the message names the table ("train", "users", ...).
        error: the exception class of the caller's module (e.g. features.FeatureError).
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise error(f"{what} lacks the column(s) {missing} (it has {list(frame.columns)})")
