"""recsys: the shared module behind the numbered notebooks (data, features, models, metrics, reports).

Importing it (any `from recsys... import ...` does) prepares the process for TensorFlow before
TensorFlow is imported: TFRS 0.7.7 is written for Keras 2, so tf-keras is selected, and the C++
log lines known to be noise on this CPU-only setup are filtered out (see `recsys.core.native_logs`).
"""

import os

from recsys.core.native_logs import filter_native_logs

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
filter_native_logs()

__version__ = "0.1.0"
