"""Shared fixtures: where the local MovieLens copies are, a project-root anchor, and the smoke run (made once)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def shared_data_root() -> Path:
    """The folder holding ml-100k/ and ml-1m-half/ (RECSYS_SHARED_DATA, default ../shared/data)."""
    return Path(os.environ.get("RECSYS_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_root()
    if not (root / "ml-100k").is_dir() or not (root / "ml-1m-half").is_dir():
        pytest.skip(f"local MovieLens copies not found at {root} (set RECSYS_SHARED_DATA)")
    return root


def run_pipeline(artifacts_dir: Path, *args: str) -> Path:
    """run_all.py into `artifacts_dir` (which must hold no other run); the run's folder."""
    import run_all

    code = run_all.main(["--artifacts-dir", str(artifacts_dir), *args])
    assert code == 0, f"run_all.py {' '.join(args)} exited {code}"
    (run_dir,) = [p for p in artifacts_dir.iterdir() if p.is_dir()]
    return run_dir


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """The whole chain on params/smoke.yaml (generated data), run once for the session: the notebook tests
    assert on it, the runs beside it reuse its upstream notebooks, and the service tests serve it."""
    return run_pipeline(tmp_path_factory.mktemp("smoke"), "--params", str(PROJECT_ROOT / "params" / "smoke.yaml"))


def run_on_smoke_params(artifacts: Path, run_name: str, *args: str) -> Path:
    """run_all.py on params/smoke.yaml into `artifacts` as run `run_name`, with these arguments (overrides,
    a selection of notebooks; none: every one); the run's folder."""
    import run_all

    params = str(PROJECT_ROOT / "params" / "smoke.yaml")
    common = ["--artifacts-dir", str(artifacts), "--params", params, "--run-name", run_name]
    assert run_all.main([*common, *args]) == 0, f"run_all.py {' '.join(args)} failed for run {run_name}"
    return artifacts / run_name


# The second chain: a release without a users file (generated data in ML-25M's CSV format: no
# demographics, half stars) on a per-user temporal split, serving the sequential retriever from a
# FAISS HNSW index. tests/notebooks/test_notebooks_csv_release.py and test_notebooks_temporal.py
# both assert on it: one chain for the two, instead of one each. Its notebook 10 runs the
# simulations in two processes (the smoke run's in the kernel). It serves two candidate sources, as
# the default parameters do (the smoke run serves the joint model's as well).
RELEASE = ("-p", "synthetic.format=ml-25m")
TEMPORAL = ("-p", "split.strategy=temporal", "-p", "retrieval.model=sequential", "-p", "retrieval.index=faiss_hnsw")
SECOND_CHAIN = (*RELEASE, *TEMPORAL, "-p", "simulation.processes=2", "-p", "online.joint_candidates=false")


@pytest.fixture(scope="session")
def temporal_release_run(tmp_path_factory) -> Path:
    """Every notebook on the temporal split of a release without users, beside the random split's 01 and 05 on the same
    data (what the run summary's split comparison reads)."""
    artifacts = tmp_path_factory.mktemp("temporal-release")
    run_on_smoke_params(artifacts, "smoke", *RELEASE, "--only", "01", "--only", "05")
    return run_on_smoke_params(artifacts, "smoke-temporal", *SECOND_CHAIN)


# headless Chromium as root on a closed network: no sandbox, no GPU, and no calls home
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_binary() -> str | None:
    """Chromium for the browser checks (`make chromium` installs Debian's), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


# tests of the session's smoke run, and of the second chain: under pytest-xdist the tests of one chain
# share one worker, so each chain is made once
SMOKE_RUN_TESTS = ("tests/notebooks/test_notebooks.py", "tests/service/")
RELEASE_RUN_TESTS = ("tests/notebooks/test_notebooks_temporal.py", "tests/notebooks/test_notebooks_csv_release.py")


def pytest_collection_modifyitems(config, items):
    """The slow tests first, each group in its collected order.

    Under pytest-xdist a worker takes the next test when it is done with its own; a test of a minute
    collected last would end the run on one worker while the other waits. Started first, the long
    ones are spread between the workers and the short ones fill in the end.
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_xdist_make_scheduler(config, log):
    """`make test` runs two pytest-xdist workers: each chain of notebooks on one worker, the rest spread out.

    The two chains are session fixtures, so the tests of a chain are one scope (made once, on one
    worker) while the other worker takes the unit tests and the other chain. (xdist's `loadgroup`
    marks do not take effect under this pytest, hence the scopes by path.)
    """
    from xdist.scheduler import LoadScopeScheduling

    class ChainScopes(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            if path.startswith(SMOKE_RUN_TESTS):
                return "smoke_run"
            if path.startswith(RELEASE_RUN_TESTS):
                return "temporal_release_run"
            return path if path.startswith("tests/notebooks/") else nodeid

    return ChainScopes(config, log)
