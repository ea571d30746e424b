"""Training on several workers with tf.distribute's MultiWorkerMirroredStrategy: cluster, worker program, jobs."""
