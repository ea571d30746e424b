"""One seed for everything random: Python, numpy and, once it is imported, TensorFlow."""

from __future__ import annotations

import os
import random
import sys

import numpy as np


def set_seed(seed: int, deterministic_tf: bool = True) -> None:
    """Seed Python's `random`, numpy's global generator and TensorFlow (if imported).

    Notebooks that never import TensorFlow stay fast: it is seeded only when already loaded, so
    call this again after importing `recsys.models`. With `deterministic_tf`, TensorFlow's op
    determinism is switched on, so a rerun with the same seed gives the same numbers.
    """
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (the global generator that libraries and old code draw from)
    if "tensorflow" in sys.modules:
        import tensorflow as tf

        tf.keras.utils.set_random_seed(seed)
        if deterministic_tf:
            tf.config.experimental.enable_op_determinism()
