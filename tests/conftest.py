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


# tests of the session's smoke run: under pytest-xdist they share one worker, so the run is made once
SMOKE_RUN_TESTS = ("tests/notebooks/test_notebooks.py", "tests/service/")


def pytest_xdist_make_scheduler(config, log):
    """`make test` runs two pytest-xdist workers: each chain of notebooks on one worker, the rest spread out.

    The smoke run is a session fixture and each chain file has module fixtures, so the tests of a chain
    are one scope (made once, on one worker) while the other worker takes the unit tests and the other
    chain. (xdist's `loadgroup` marks do not take effect under this pytest, hence the scopes by path.)
    """
    from xdist.scheduler import LoadScopeScheduling

    class ChainScopes(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            if path.startswith(SMOKE_RUN_TESTS):
                return "smoke_run"
            return path if path.startswith("tests/notebooks/") else nodeid

    return ChainScopes(config, log)
