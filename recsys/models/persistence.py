"""A Keras model saved as weights + model.json (its config) + encoder.json, and read back into its own class."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from recsys.core.io import atomic_dir


def save_model_folder(model: Any, encoder: Any, folder: str | os.PathLike, state: dict) -> Path:
    """Save a Keras model's weights, `state` (config etc.) and its FeatureEncoder in one folder, atomically.

    Reloading rebuilds the model's class from `state` and loads the weights (see `read_model_folder`):
    the saved model is the same class as the trained one, not a generic SavedModel.
    """
    with atomic_dir(folder) as tmp:
        model.save_weights(str(tmp / "weights"))
        (tmp / "model.json").write_text(json.dumps({**state, "cardinalities": encoder.cardinalities()}, indent=2))
        encoder.save(tmp / "encoder.json")
    return Path(folder)


def read_model_folder(folder: str | os.PathLike) -> tuple[dict, Any, str]:
    """(state, FeatureEncoder, weights path) of a folder written by `save_model_folder`.

    Raises:
        FileNotFoundError: no saved model there (`Run.require` names the notebook that writes it).
    """
    from recsys.features.encoding import FeatureEncoder

    folder = Path(folder)
    if not (folder / "model.json").exists():
        raise FileNotFoundError(f"{folder} holds no saved model (model.json missing): save one with save_model_folder")
    return (
        json.loads((folder / "model.json").read_text()),
        FeatureEncoder.load(folder / "encoder.json"),
        str(folder / "weights"),
    )
