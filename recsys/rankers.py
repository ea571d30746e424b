"""The learned rankers behind one interface: build by name, fit, predict, save, and load whichever was saved."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
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
    """What serving and evaluation need of a learned ranker (recsys.lambdarank, recsys.dcn_ranker)."""

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


def make_ranker(name: str, features: Sequence[str], params: dict, seed: int) -> Ranker:
    """A fresh ranker of the kind `name` (one of RANKER_NAMES) with its params group."""
    if name == "lambdarank":
        from recsys.lambdarank import LambdaRankRanker

        return LambdaRankRanker(features, params, seed)
    if name == "dcn":
        from recsys.dcn_ranker import DCNRanker

        return DCNRanker(features, params, seed)
    raise ValueError(f"unknown ranker {name!r}; choose one of {', '.join(RANKER_NAMES)}")


def load_ranker(folder: str | os.PathLike) -> Ranker:
    """Whichever ranker `save` wrote into `folder`, rebuilt to give the same scores.

    Raises:
        FileNotFoundError: no saved ranker there.
    """
    if read_state(folder)["name"] == "lambdarank":
        from recsys.lambdarank import LambdaRankRanker

        return LambdaRankRanker.load(folder)
    from recsys.dcn_ranker import DCNRanker

    return DCNRanker.load(folder)
