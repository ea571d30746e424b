"""Calling a Keras model on numpy inputs through one traced graph per model (no `model.predict` loop)."""

from __future__ import annotations

import weakref
from collections.abc import Callable

import numpy as np
import tensorflow as tf

_CALLERS: weakref.WeakKeyDictionary[tf.keras.Model, tuple[tuple, Callable]] = weakref.WeakKeyDictionary()


def _caller(model: tf.keras.Model, inputs: dict[str, np.ndarray]) -> Callable:
    """The model's call as a tf.function with a batch-size-agnostic signature, traced once per input layout."""
    signature = tuple(sorted((name, value.shape[1:], value.dtype.str) for name, value in inputs.items()))
    cached = _CALLERS.get(model)
    if cached is None or cached[0] != signature:
        if not model.built:  # create the variables eagerly, outside the traced function
            model({name: value[:1] for name, value in inputs.items()}, training=False)
        specs = {
            name: tf.TensorSpec((None, *value.shape[1:]), tf.as_dtype(value.dtype)) for name, value in inputs.items()
        }
        model_ref = weakref.ref(model)  # a strong reference here would keep the cache entry alive forever
        call = tf.function(lambda features: model_ref()(features, training=False), input_signature=[specs])
        # One trace per model is the design (each model gets its own graph), but TensorFlow counts
        # traces per source line across models and warns of "retracing" after five models, as in
        # a notebook that trains and scores several.
        call._omit_frequent_tracing_warning = True
        # the concrete graph, called with tensors: the polymorphic dispatch and the numpy conversion
        # inside it cost about 1.4 ms a call (0.65 ms left; 100 candidates, ml-1m-half's rating model)
        cached = (signature, call.get_concrete_function())
        _CALLERS[model] = cached
    return cached[1]


def predict(model: tf.keras.Model, inputs: dict[str, np.ndarray], batch_size: int = 16_384) -> np.ndarray:
    """The model's outputs on `inputs`, one value per row, in calls of at most `batch_size` rows.

    `model.predict` builds a dataset and a prediction loop on every call and retraces for every
    new model (TensorFlow warns after five), and eager `model(inputs)` runs op by op. Measured
    for 100 candidates with the full-feature rating model on ml-1m-half (2 shared cores): 1.1 ms
    here, 8.5 ms eager, 85 ms `model.predict`.
    """
    call = _caller(model, inputs)
    n = len(next(iter(inputs.values())))
    parts = [
        call({name: tf.constant(value[start : start + batch_size]) for name, value in inputs.items()})
        .numpy()
        .reshape(-1)
        for start in range(0, n, batch_size)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)
