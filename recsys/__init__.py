"""recsys: the shared module behind the numbered notebooks (data, features, models, metrics, reports)."""

import os

# TFRS 0.7.7 is written for Keras 2: select tf-keras before anything imports TensorFlow.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
