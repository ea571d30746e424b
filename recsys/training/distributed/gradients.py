"""Gradients across workers: the small embedding tables' gradients all-reduced as dense tensors.

An embedding table's gradient is sparse (`tf.IndexedSlices`: the rows a batch looked up). Under
MultiWorkerMirroredStrategy every sparse gradient is all-gathered on its own (its values, its
row indices), while the dense gradients are packed into a few all-reduces. The rating model
looks up 16 tables, so a step waited on dozens of round trips between the workers: on the smoke
data an epoch of the distributed rating job took 1.0 s, and 0.25 s with the small tables'
gradients made dense first (benchmarks/distributed.py measures a job).

A table of at most `DENSE_LIMIT_BYTES` is made dense before the all-reduce; a larger one (the
user ids of a large release) stays sparse, where a batch's rows are fewer bytes than the table.
The update is the same: Keras's Adam and SGD deduplicate a sparse gradient's rows, then move
every row as a dense gradient with zeros in the other rows would (Adam decays every row's
moments either way; SGD leaves a zero-gradient row where it is). `LazyAdam` is left alone: it
updates only the rows that have a gradient, which a dense gradient no longer says.
"""

from __future__ import annotations

import tensorflow as tf

from recsys.models.lazy_adam import LazyAdam

# 1M float32s: every table of ML-1M (6,040 users x 64 is 1.5 MB); a large release's user ids stay sparse
DENSE_LIMIT_BYTES = 4 * 2**20


def densify_small(grads_and_vars: list, limit_bytes: int = DENSE_LIMIT_BYTES) -> list:
    """The (gradient, variable) pairs with every sparse gradient of a variable of at most `limit_bytes` made dense."""
    pairs = []
    for gradient, variable in grads_and_vars:
        if (
            isinstance(gradient, tf.IndexedSlices)
            and variable.shape.num_elements() * variable.dtype.size <= limit_bytes
        ):
            gradient = tf.convert_to_tensor(gradient)
        pairs.append((gradient, variable))
    return pairs


def aggregate_small_tables_dense(
    optimizer: tf.keras.optimizers.Optimizer, limit_bytes: int = DENSE_LIMIT_BYTES
) -> None:
    """Make `optimizer` densify small sparse gradients before it aggregates them across workers.

    Keras documents `aggregate_gradients` as the method to override for custom aggregation; this
    wraps the optimizer's own. A LazyAdam is left as it is (see the module docstring).
    """
    if isinstance(optimizer, LazyAdam):
        return
    aggregate = optimizer.aggregate_gradients

    def densify_then_aggregate(grads_and_vars):
        return aggregate(densify_small(list(grads_and_vars), limit_bytes))

    optimizer.aggregate_gradients = densify_then_aggregate
