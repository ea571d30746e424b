"""The chain on a per-user temporal split serving the sequential retriever, through the simulation.

The second chain of `make test` (tests/conftest.py: `temporal_release_run`, on generated data in
ML-25M's CSV format, which tests/notebooks/test_notebooks_csv_release.py reads too), beside a
random-split run of 01 and 05 on the same data, which the temporal run's summary compares it with.
Rerun from 05 with the same seed, it must repeat every metric but the timings.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

import run_all
from tests.conftest import SECOND_CHAIN, run_on_smoke_params

pytestmark = pytest.mark.slow
TIMING_KEY = re.compile(r"(_s|_ms|_per_s|_gb)$|^fit_s_|_ms_")


def metrics(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / stage / "metrics.json").read_text())


@pytest.fixture
def temporal_run(temporal_release_run) -> Path:
    """The temporal chain: served from a FAISS HNSW index, which 06-10 load in fresh kernels, so the rerun
    must give the same lists."""
    return temporal_release_run


def test_temporal_run_serves_the_sequential_retriever_and_compares_with_the_random_run(temporal_run):
    interactions = pd.read_parquet(temporal_run / "01_preprocess" / "interactions.parquet")
    by_split = interactions.groupby(["user_id", "split"], observed=True)["position"]
    first, last = by_split.min().unstack(), by_split.max().unstack()
    assert (last["train"] < first["test"]).all() and (last["val"] < first["test"])[last["val"].notna()].all()
    m5, m6 = metrics(temporal_run, "05_retrieval"), metrics(temporal_run, "06_retrieval_ranking")
    assert m5["split_strategy"] == "temporal" and m6["served_retriever"] == "sequential"
    assert m5["retrieval_index"] == m6["retrieval_index"] == "faiss_hnsw" and m5["faiss_hnsw_overlap_at_50"] > 0.9
    assert 0 < m6["recall_at_10_retrieval_only"] <= 1 and 0 < m6["ndcg_at_10_learned"] <= 1
    # the default's two candidate sources (online.joint_candidates: false): no joint model's candidates
    assert "candidate_recall_joint_test" not in m6 and m6["candidate_recall_ease_test"] > 0
    candidates = pd.read_parquet(temporal_run / "06_retrieval_ranking" / "candidates.parquet")
    assert (candidates["joint_rank"] == 0).all() and not candidates["source"].astype(str).str.contains("joint").any()
    # after 06, every notebook serves 06's path: the sequential retriever's queries, read from each stage's history
    m8, m10 = metrics(temporal_run, "08_explore_gaussian_noise"), metrics(temporal_run, "10_simulation")
    assert m8["setting_chosen_on"] == "val" and m10["served_retriever"] == "sequential"
    assert "(2 processes:" in (temporal_run / "reports" / "10_simulation.html").read_text()
    assert m10["accepted_per_user_served"] > m10["accepted_per_user_random"]
    assert "served retriever: sequential" in (temporal_run / "reports" / "10_simulation.html").read_text()
    index = (temporal_run / "reports" / "index.html").read_text()
    assert "Retrieval under each split strategy" in index and ">smoke<" in index and ">smoke-temporal<" in index


def without_timings(m: dict) -> dict:
    return {k: v for k, v in m.items() if not TIMING_KEY.search(k)}


def test_rerun_with_the_same_seed_gives_the_same_metrics(temporal_run):
    """Retrieval (the FAISS HNSW index included), serving, exploration and the simulation repeat exactly:
    metrics.json equal but for timings (05-10 rerun on the same seed)."""
    stages = [p.stem for p in run_all.discover_notebooks()][4:]  # 05 onwards: the two-tower, the index, serving
    before = {s: without_timings(metrics(temporal_run, s)) for s in stages}
    assert "faiss_hnsw_overlap_at_50" in before["05_retrieval"] and "n_seeds" in before["10_simulation"]
    run_on_smoke_params(temporal_run.parent, temporal_run.name, *SECOND_CHAIN, "--from", "05")
    assert {s: without_timings(metrics(temporal_run, s)) for s in stages} == before
