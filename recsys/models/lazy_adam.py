"""Adam whose sparse updates touch only the embedding rows of the batch (LazyAdam).

Keras's Adam decays the moments of every row of an embedding table at every step, even for a
sparse gradient: each step costs the size of the tables, not of the batch. At ML-25M's size
(162k users and 62k movies of 64 floats, 20k steps an epoch) that is most of the retrieval
model's training time, and it grows with users x steps. LazyAdam (as TensorFlow Addons'
`LazyAdam`, whose package is no longer maintained and does not support TensorFlow 2.20) updates
the moments and the weights of the rows a batch looked up, and nothing else: a row keeps its
moments until it is seen again. Dense gradients (layers that are not embeddings) get Adam's own
update unchanged.
"""

from __future__ import annotations

import tensorflow as tf


class LazyAdam(tf.keras.optimizers.Adam):
    """`tf.keras.optimizers.Adam` with row-wise (lazy) updates for sparse gradients."""

    def update_step(self, gradient, variable):
        if not isinstance(gradient, tf.IndexedSlices):
            super().update_step(gradient, variable)
            return
        # the base optimizer has summed repeated indices already (`_deduplicate_sparse_grad`)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        alpha = tf.cast(self.learning_rate, dtype) * tf.sqrt(1 - tf.pow(beta_2, step)) / (1 - tf.pow(beta_1, step))
        epsilon = self.epsilon * tf.sqrt(1 - tf.pow(beta_2, step)) if self.adaptive_epsilon else self.epsilon
        key = self._index_dict[self._var_key(variable)]
        m, v, rows = self._momentums[key], self._velocities[key], gradient.indices
        m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * gradient.values
        v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(gradient.values)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        variable.scatter_sub(tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + epsilon), rows))
