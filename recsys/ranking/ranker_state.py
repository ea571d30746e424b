"""A saved learned ranker's state file, and what every ranker offers (the interface serving and evaluation use)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

RANKER_NAMES = ("lambdarank", "dcn")


STATE_FILE = "ranker.json"  # in every saved ranker's folder: which ranker, and its settings


def write_state(folder: Path, name: str, **state) -> None:
    """Write a saved ranker's `ranker.json` (its name and settings) into `folder` (a temporary folder being filled)."""
    (Path(folder) / STATE_FILE).write_text(json.dumps({"name": name, **state}, indent=2))


def read_state(folder: str | os.PathLike) -> dict:
    """The `ranker.json` of a saved ranker.

    Raises:
        FileNotFoundError: no saved ranker there.
    """
    path = Path(folder) / STATE_FILE
    if not path.exists():
        raise FileNotFoundError(f"{folder} holds no saved ranker ({STATE_FILE} missing): save one with ranker.save")
    return json.loads(path.read_text())


class Ranker(Protocol):
    """What serving and evaluation need of a learned ranker (recsys.ranking.lambdarank, recsys.ranking.dcn_ranker)."""

    name: str
    features: list[str]

    def fit(
        self,
        X: pd.DataFrame,
        y: np.ndarray,
        groups: np.ndarray,
        X_valid: pd.DataFrame,
        y_valid: np.ndarray,
        groups_valid: np.ndarray,
    ) -> Ranker: ...

    def predict(self, X: pd.DataFrame) -> np.ndarray: ...

    def save(self, folder: str | os.PathLike) -> Path: ...
