"""LazyAdam: Adam's update on the rows a sparse gradient names, nothing on the others; Adam's own on dense gradients."""

import numpy as np
import tensorflow as tf

from recsys.models.lazy_adam import LazyAdam


def _adam_rows(weights, grads, lr, steps):
    """Adam by hand on rows that get a gradient at every step."""
    m = np.zeros_like(weights)
    v = np.zeros_like(weights)
    w = weights.copy()
    for t in range(1, steps + 1):
        m = 0.9 * m + 0.1 * grads
        v = 0.999 * v + 0.001 * grads**2
        w -= lr * np.sqrt(1 - 0.999**t) / (1 - 0.9**t) * m / (np.sqrt(v) + 1e-7)
    return w


def test_sparse_steps_move_only_the_rows_looked_up_and_as_adam_does():
    table = tf.Variable(np.arange(12, dtype=np.float32).reshape(6, 2))
    before = table.numpy().copy()
    optimizer = LazyAdam(0.1)
    for _ in range(3):
        with tf.GradientTape() as tape:
            rows = tf.nn.embedding_lookup(table, [1, 4, 1])  # row 1 twice: its gradients add up
            loss = tf.reduce_sum(rows * [[1.0, 2.0], [3.0, -1.0], [1.0, 2.0]])
        gradient = tape.gradient(loss, table)
        assert isinstance(gradient, tf.IndexedSlices)
        optimizer.apply_gradients([(gradient, table)])
    after = table.numpy()
    untouched = [0, 2, 3, 5]
    np.testing.assert_array_equal(after[untouched], before[untouched])
    expected = _adam_rows(before[[1, 4]], np.array([[2.0, 4.0], [3.0, -1.0]], np.float32), 0.1, 3)
    np.testing.assert_allclose(after[[1, 4]], expected, rtol=1e-5)
    # Keras's Adam moves every row: the moments of rows 0, 2, 3, 5 decay and step them too (here from 0: no move),
    # but its rows 1 and 4 follow the same first steps
    dense = tf.Variable(before)
    keras_adam = tf.keras.optimizers.Adam(0.1)
    for _ in range(3):
        with tf.GradientTape() as tape:
            rows = tf.nn.embedding_lookup(dense, [1, 4, 1])
            loss = tf.reduce_sum(rows * [[1.0, 2.0], [3.0, -1.0], [1.0, 2.0]])
        keras_adam.apply_gradients([(tape.gradient(loss, dense), dense)])
    np.testing.assert_allclose(dense.numpy()[[1, 4]], after[[1, 4]], rtol=1e-5)


def test_dense_gradients_get_adams_update():
    lazy, adam = tf.Variable([1.0, -2.0, 0.5]), tf.Variable([1.0, -2.0, 0.5])
    lazy_opt, adam_opt = LazyAdam(0.05), tf.keras.optimizers.Adam(0.05)
    for step in range(4):
        gradient = tf.constant([0.3, -0.1 * step, 2.0])
        lazy_opt.apply_gradients([(gradient, lazy)])
        adam_opt.apply_gradients([(gradient, adam)])
    np.testing.assert_array_equal(lazy.numpy(), adam.numpy())
