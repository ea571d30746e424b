"""Keep TensorFlow's and ScaNN's known-harmless C++ log lines out of the console and the reports.

TensorFlow and ScaNN log from C++ straight to file descriptor 2, past Python's `logging` and
`warnings`, and some of what they print on this CPU-only setup is noise that reads like a failure:
a red "failed call to cuInit" at every import, "NodeDef mentions attribute use_unbounded_threadpool"
at every tf.data map, ScaNN's partitioner timings. `TF_CPP_MIN_LOG_LEVEL` cannot drop them
without also dropping real errors (the first two are logged at ERROR level), so the lines are
filtered by what they say instead: fd 2 is routed through a pipe, a thread drops the lines that
match `HARMLESS`, and everything else reaches the original fd 2 unchanged (in a Jupyter kernel
that is ipykernel's capture, so the rest still shows in the notebook and its HTML report).

Set RECSYS_NATIVE_LOGS=all to see every line.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import sys
import threading

# Each pattern names the C++ source that logs the line, so an unrelated message is never dropped.
HARMLESS = re.compile(
    "|".join(
        [
            r"cuda_platform\.cc:\d+\] failed call to cuInit",  # no GPU on this machine: expected
            r"cuda_(dnn|fft|blas)\.cc:\d+\] Unable to register",  # CUDA plugins of the GPU build
            r"node_def_util\.cc:\d+\] NodeDef mentions attribute use_unbounded_threadpool",  # tf.data op attr
            r"util\.cc:\d+\] oneDNN supports DT_[A-Z0-9]+ only on platforms with AVX-512",
            r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
            r"^I\d{4} .*(partitioner_factory_base\.cc|kmeans_tree_partitioner_utils\.h)",  # ScaNN build info
            r"^W\d{4} .*gmm_utils\.cc:\d+\] Could not normalize centroid",  # ScaNN: an empty k-means cell
        ]
    )
)

_installed = False


def _forward(read_fd: int, write_fd: int) -> None:
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        pending = b""
        while chunk := pipe.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            kept = [line for line in lines if not HARMLESS.search(line.decode("utf-8", "replace"))]
            if kept:
                os.write(write_fd, b"\n".join(kept) + b"\n")
        if pending and not HARMLESS.search(pending.decode("utf-8", "replace")):
            os.write(write_fd, pending)


def filter_native_logs() -> bool:
    """Route fd 2 through the filter (once per process); False when it is off or fd 2 is unusable."""
    global _installed
    if _installed or os.environ.get("RECSYS_NATIVE_LOGS") == "all":
        return _installed
    try:
        original = os.dup(2)
    except OSError:  # no stderr at all (e.g. a daemon): nothing to filter
        return False
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    forwarder = threading.Thread(target=_forward, args=(read_fd, original), name="recsys-native-logs", daemon=True)
    forwarder.start()
    atexit.register(_restore, original, forwarder)
    _installed = True
    return True


def _restore(original: int, forwarder: threading.Thread) -> None:
    # At exit (after an uncaught exception's traceback was written into the pipe): put the real
    # stderr back, which closes this process's end of the pipe, and let the thread pass on the rest.
    with contextlib.suppress(AttributeError, ValueError, OSError):
        sys.stderr.flush()
    os.dup2(original, 2)
    forwarder.join(timeout=2.0)  # child processes may still hold the pipe open: do not wait for them
