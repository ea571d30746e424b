"""The chain 01-10 on a release without a users file: generated data in ML-25M's CSV format.

ML-10M, ML-20M and ML-25M have no demographics and no ZIP codes, and half-star ratings. The
same notebooks must run on them, say what they skip, and never show an empty plot or a column of
silent zeros. params/smoke.yaml with `synthetic.format: ml-25m` stands in for those releases: the
second chain of `make test` (tests/conftest.py: `temporal_release_run`, a per-user temporal split
serving the sequential retriever from a FAISS index), which test_notebooks_temporal.py reads too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import run_all
from tests.notebooks.test_notebooks import metrics

pytestmark = pytest.mark.slow


@pytest.fixture
def csv_run(temporal_release_run) -> Path:
    return temporal_release_run


def _printed(run_dir: Path, notebook: str) -> str:
    cells = json.loads((run_dir / "notebooks" / f"{notebook}.ipynb").read_text())["cells"]
    return "".join(
        "".join(o.get("text", "")) for c in cells for o in c.get("outputs", []) if o.get("output_type") == "stream"
    )


def test_every_notebook_runs_on_a_release_without_users(csv_run):
    manifest = json.loads((csv_run / "manifest.json").read_text())
    assert [n["name"] for n in manifest["notebooks"]] == [p.stem for p in run_all.discover_notebooks()]
    assert all(n["status"] == "ok" for n in manifest["notebooks"])
    for report in (csv_run / "reports").glob("*.html"):
        assert "Traceback" not in report.read_text(), report.name


def test_the_release_and_its_scale_are_recorded(csv_run):
    info = json.loads((csv_run / "01_preprocess" / "dataset.json").read_text())
    assert info["release"] == "ml-25m" and info["rating_scale"] == [0.5, 5.0] and info["rating_step"] == 0.5
    assert info["feature_groups"] == ["genres", "time"]
    interactions = pd.read_parquet(csv_run / "01_preprocess" / "interactions.parquet")
    assert (interactions["rating"] % 1 == 0.5).any() and interactions["rating"].between(0.5, 5.0).all()


def test_preprocess_has_no_user_attributes_and_says_so(csv_run):
    users = pd.read_parquet(csv_run / "01_preprocess" / "users.parquet")
    assert list(users.columns) == ["user_id"]
    interactions = pd.read_parquet(csv_run / "01_preprocess" / "interactions.parquet")
    assert not {"gender", "age_group", "occupation", "zip5", "city", "state"} & set(interactions.columns)
    quality = pd.read_parquet(csv_run / "01_preprocess" / "data_quality.parquet")
    assert not quality["check"].str.contains("ZIP").any()
    assert "zip_state_resolved_share" not in metrics(csv_run, "01_preprocess")
    assert "ml-25m has no users file" in _printed(csv_run, "01_preprocess")


def test_eda_skips_demographics_and_geography_without_empty_plots(csv_run):
    m = metrics(csv_run, "02_eda")
    assert m["feature_groups"] == "genres, time"
    assert not {"top_state", "largest_age_group", "male_user_share"} & set(m)
    figures = {p.stem for p in (csv_run / "02_eda").glob("*.png")}
    assert {"activity_by_time", "genres_and_years", "ratings_and_bias", "feature_association"} <= figures
    assert not {"who_rates", "geography"} & figures
    printed = _printed(csv_run, "02_eda")
    assert "no age group, occupation or gender to show" in printed and "no ZIP codes" in printed


def test_rating_models_learn_half_stars_and_ablate_only_existing_groups(csv_run):
    baselines, m = metrics(csv_run, "03_baselines"), metrics(csv_run, "04_two_tower_rating")
    assert baselines["rmse_svd"] < baselines["rmse_global_mean"]
    assert m["rmse_two_tower"] < 0.9 * baselines["rmse_global_mean"]
    assert {k for k in m if k.startswith("rmse_ablation_")} == {
        f"rmse_ablation_{s}" for s in ("ids", "movie", "context")
    }
    assert "which this release does not have" in _printed(csv_run, "04_two_tower_rating")


def test_retrieval_and_ranking_go_without_user_attributes(csv_run):
    retrieval = metrics(csv_run, "05_retrieval")
    assert retrieval["recall_at_100_two_tower"] > retrieval["recall_at_100_popularity"]
    assert retrieval["retrieval_index"] == metrics(csv_run, "06_retrieval_ranking")["retrieval_index"] == "faiss_hnsw"
    ranker = json.loads((csv_run / "06_retrieval_ranking" / "ranker" / "ranker.json").read_text())
    assert "log_activity" in ranker["features"]
    assert not {"gender", "age_group", "occupation"} & set(ranker["features"])
    assert "no attributes in this release" in _printed(csv_run, "06_retrieval_ranking")
    simulation = metrics(csv_run, "10_simulation")
    assert simulation["accepted_per_user_served"] > simulation["accepted_per_user_random"]
