"""Run folders: atomic writes with normal permissions, figures, and what the run summary shows."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from recsys.core.io import atomic_dir, atomic_path, write_json
from recsys.runs.artifacts import Run
from recsys.runs.report import _format_value
from tests.conftest import PROJECT_ROOT


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_files_and_folders_get_the_modes_of_any_new_file(tmp_path, umask_022):
    # mkstemp/mkdtemp create 0600/0700: a colleague or a web server could not read the reports
    path = write_json(tmp_path / "run" / "metrics.json", {"a": 1})
    assert mode(path) == 0o644
    with atomic_path(tmp_path / "table.parquet") as tmp:
        tmp.write_bytes(b"x")
    assert mode(tmp_path / "table.parquet") == 0o644
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "weights").write_bytes(b"w")
    assert mode(tmp_path / "model") == 0o755 and mode(tmp_path / "model" / "weights") == 0o644
    os.umask(0o077)  # a stricter umask is respected
    assert mode(write_json(tmp_path / "private.json", {})) == 0o600


def test_figures_are_written_through_the_one_saver(tmp_path, umask_022):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([1, 2], [3, 4])
    path = Run(tmp_path, "r").save_figure(fig, "02_eda", "line")
    plt.close(fig)
    assert path.read_bytes()[:4] == b"\x89PNG" and mode(path) == 0o644
    assert not list(path.parent.glob("*.tmp"))


@pytest.mark.parametrize(
    "value, shown",
    [(1992, "1992"), (2999, "2999"), (487_650, "487,650"), (0.123456, "0.1235"), (2.5e6, "2,500,000"), (True, "True")],
)
def test_index_groups_digits_only_in_large_counts(value, shown):
    assert _format_value(value) == shown


def test_tensorflow_noise_is_filtered_and_real_errors_are_not(tmp_path):
    script = (
        "import os, sys\n"
        "import recsys\n"
        "os.write(2, b'2026-12-01 E external/local_xla/xla/stream_executor/cuda/cuda_platform.cc:51] "
        "failed call to cuInit: INTERNAL: CUDA error\\n')\n"
        "os.write(2, b'2026-12-01 E tensorflow/core/framework/node_def_util.cc:680] NodeDef mentions attribute "
        "use_unbounded_threadpool which is not in the op definition\\n')\n"
        "os.write(2, b'E0000 tensorflow/core/kernels/some_op.cc:1] a real error\\n')\n"
        "raise SystemExit('the last words')\n"
    )
    env = {**os.environ}
    env.pop("RECSYS_NATIVE_LOGS", None)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=PROJECT_ROOT, env=env)
    assert "cuInit" not in out.stderr and "use_unbounded_threadpool" not in out.stderr
    assert "a real error" in out.stderr and "the last words" in out.stderr  # written just before exit: not lost
    shown = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env={**env, "RECSYS_NATIVE_LOGS": "all"},
    )
    assert "cuInit" in shown.stderr


def test_metrics_carry_the_peak_memory_of_the_process_that_wrote_them(tmp_path):
    import json
    import resource

    import numpy as np

    block = np.ones(40_000_000, np.uint8)  # 40 MB touched: the peak is at least that much
    assert int(block.sum()) == 40_000_000
    path = Run(tmp_path, "r").write_metrics("01_a", {"n": 1})
    written = json.loads(path.read_text())
    assert written["n"] == 1 and written["kernel_peak_rss_gb"] >= 0.04
    assert written["kernel_peak_rss_gb"] == pytest.approx(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, rel=0.05
    )
    with pytest.raises(TypeError, match="must be flat"):
        Run(tmp_path, "r").write_metrics("01_a", {"nested": {"a": 1}})
