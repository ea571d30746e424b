"""The notebook chain executed through papermill by run_all.py, asserting on each metrics.json."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest

import run_all
from recsys.runs.report import strategy_table
from tests.conftest import CHROMIUM_FLAGS, chromium_binary, run_on_smoke_params, run_pipeline

pytestmark = pytest.mark.slow


def metrics(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / stage / "metrics.json").read_text())


def test_smoke_run_writes_reports_and_manifest(smoke_run):
    manifest = json.loads((smoke_run / "manifest.json").read_text())
    names = [p.stem for p in run_all.discover_notebooks()]
    assert [n["name"] for n in manifest["notebooks"]] == names
    assert all(n["status"] == "ok" and n["wall_s"] > 0 for n in manifest["notebooks"])
    for n in manifest["notebooks"]:  # every kernel's peak memory, written with its metrics
        assert 0.1 < metrics(smoke_run, n["name"])["kernel_peak_rss_gb"] < 8
    assert manifest["params"]["dataset"] == "synthetic" and manifest["packages"]["tensorflow"] == "2.20.0"
    index = (smoke_run / "reports" / "index.html").read_text()
    for name in names:
        report = smoke_run / "reports" / f"{name}.html"
        assert report.stat().st_size > 10_000
        assert f'href="{name}.html"' in index
        assert "Traceback" not in report.read_text()


def test_a_finished_run_is_up_to_date_for_the_runner(smoke_run, capsys):
    """`run_all.py --changed` with the run's own parameters finds every real notebook up to date and runs nothing."""
    manifest = (smoke_run / "manifest.json").read_text()
    params = str(run_all.PROJECT_ROOT / "params" / "smoke.yaml")
    capsys.readouterr()
    assert run_all.main(["--artifacts-dir", str(smoke_run.parent), "--params", params, "--changed"]) == 0
    out = capsys.readouterr().out
    assert "every selected notebook is up to date" in out, out
    assert out.count("up to date, skipped") == len(run_all.discover_notebooks())
    assert (smoke_run / "manifest.json").read_text() == manifest


def test_the_wait_after_an_edit_counts_only_what_reruns(smoke_run):
    """benchmarks/rerun_wait.py on the run: an edit of 04 reruns what reads it, not 05; one of 02, 02 alone."""
    from benchmarks.rerun_wait import rerun_table

    table = rerun_table(smoke_run)
    assert table.loc["02_eda", "reruns"] == "02"
    assert table.loc["04_two_tower_rating", "reruns"] == "04 05b 06 07 08 09 10"
    assert table.loc["01_preprocess", "changed_wait_s"] == pytest.approx(table.loc["01_preprocess", "from_wait_s"])
    assert (table["changed_wait_s"] <= table["from_wait_s"] + 1e-9).all()
    assert table.loc["04_two_tower_rating", "saved_share"] > 0  # 05's time is not waited for


def test_reports_carry_no_library_warnings(smoke_run):
    """A reviewer reads the reports: TensorFlow/ScaNN/pandas warnings in a cell's output are noise to fix at the source."""
    noisy = re.compile(r"^(WARNING|W\d{4} )|AutoGraph could not transform|\w+Warning: ", re.MULTILINE)
    for notebook in sorted((smoke_run / "notebooks").glob("*.ipynb")):
        for cell in json.loads(notebook.read_text())["cells"]:
            for output in cell.get("outputs", []):
                text = "".join(output.get("text", "")) if output.get("output_type") == "stream" else ""
                assert not noisy.search(text), f"{notebook.name}: {text[:300]}"


def test_smoke_preprocess_metrics(smoke_run):
    m = metrics(smoke_run, "01_preprocess")
    assert m["n_users"] + m["n_foldin_users"] == 300 and m["n_foldin_users"] == 30  # split.foldin_share 0.1
    assert m["n_train"] + m["n_val"] + m["n_test"] == m["n_ratings"]
    assert m["n_test"] == pytest.approx(0.1 * m["n_ratings"], rel=0.15)
    assert 0.8 < m["zip_state_resolved_share"] < 1.0  # the generator plants non-US and ZIP+4 codes
    for artifact in ("users", "movies", "interactions", "data_quality"):
        stage, filename = run_all.ARTIFACTS[artifact]
        assert (smoke_run / stage / filename).exists()
    assert not list(smoke_run.rglob("*.tmp")), "a temporary file was left behind"


def test_smoke_eda_metrics(smoke_run):
    m = metrics(smoke_run, "02_eda")
    assert 3.0 < m["global_mean_rating"] < 4.2
    assert 0 <= m["most_active_hour"] <= 23
    assert m["most_active_weekday"] in {"Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"}
    assert m["top_genre"] and len(m["top_state"]) == 2
    assert len(list((smoke_run / "02_eda").glob("*.png"))) >= 6


# 5% of the movies with at least 20 ratings (ML-100K: 939 of them); the mean rating of the others' ratings
NEW_100K, MEAN_100K, MEAN_1M_HALF = 47, 3.5329, 3.5743


@pytest.mark.shared_data
@pytest.mark.parametrize(
    "dataset, folder, expected",
    [
        ("ml-100k", "ml-100k", {"n_users": 943, "n_ratings": 100_000, "n_new_movies": NEW_100K}),
        ("ml-1m", "ml-1m-half", {"n_users": 2999, "n_ratings": 487_650, "n_users_listed": 6040, "n_new_movies": 132}),
    ],
)
def test_real_data_preprocess_and_eda(tmp_path, shared_data, dataset, folder, expected):
    run_dir = run_pipeline(
        tmp_path,
        "-p",
        f"dataset={dataset}",
        "-p",
        f"data_dir={shared_data / folder}",
        "--run-name",
        folder,
        "--until",
        "02",
    )
    m1 = metrics(run_dir, "01_preprocess")
    # every rating read is in interactions, with a fold-in user, or of a new movie (used in 09 or not)
    set_apart = m1["n_foldin_ratings"] + m1["n_new_movie_ratings"] + m1["n_new_movie_ratings_unused"]
    m1 = {**m1, "n_users": m1["n_users"] + m1["n_foldin_users"], "n_ratings": m1["n_ratings"] + set_apart}
    assert {k: m1[k] for k in expected} == expected
    assert m1["n_rows_dropped"] == 0
    assert m1["zip_state_resolved_share"] > 0.95
    m2 = metrics(run_dir, "02_eda")
    # the mean of the ratings the models see: the new movies' (well-rated movies, 5% of them) are set apart
    assert m2["global_mean_rating"] == pytest.approx(MEAN_100K if dataset == "ml-100k" else MEAN_1M_HALF, abs=1e-3)
    assert m2["top_state"] == "CA"


def test_smoke_baselines_metrics(smoke_run):
    m = metrics(smoke_run, "03_baselines")
    for name in ("random", "weighted_sampling", "majority", "global_mean", "bias", "svd"):
        assert m[f"rmse_{name}"] > m[f"mae_{name}"] > 0
    # the synthetic ratings have user/movie structure: learned models beat the mean, the mean beats chance
    assert m["rmse_svd"] < m["rmse_global_mean"] and m["rmse_bias"] < m["rmse_global_mean"]
    assert m["rmse_global_mean"] < m["rmse_weighted_sampling"] < m["rmse_random"]


def test_smoke_two_tower_beats_the_global_mean(smoke_run):
    m = metrics(smoke_run, "04_two_tower_rating")
    baselines = metrics(smoke_run, "03_baselines")
    assert m["rmse_two_tower"] < 0.9 * baselines["rmse_global_mean"]
    assert m["rmse_two_tower"] < baselines["rmse_bias"]
    assert {f"rmse_ablation_{s}" for s in ("ids", "user", "movie", "context")} <= set(m)
    assert m["best_epoch"] >= 1 and m["train_wall_s"] > 0 and m["train_examples_per_s"] > 0
    assert (smoke_run / "04_two_tower_rating" / "rating_model" / "model.json").exists()
    # the unchanged single-process path: no strategy, no job folder
    assert m["trained_by"].startswith("one process") and m["train_workers"] == 1
    assert not (smoke_run / "04_two_tower_rating" / "distributed_jobs").exists()


RETRIEVAL_GAP_METRICS = ("recall_at_10", "recall_at_100", "ndcg_at_10")


def test_smoke_retrieval_metrics(smoke_run):
    m = metrics(smoke_run, "05_retrieval")
    for model in ("popularity", "ease", "two_tower"):
        assert 0 < m[f"recall_at_10_{model}"] <= m[f"recall_at_50_{model}"] <= m[f"recall_at_100_{model}"] <= 1
    # the generated users watch by taste, not only by popularity: learned retrieval must beat popularity
    assert m["recall_at_10_two_tower"] > 1.2 * m["recall_at_10_popularity"]
    assert m["recall_at_10_ease"] > m["recall_at_10_popularity"]
    assert m["scann_overlap_at_100"] > 0.5
    assert [m[f"factorized_top_{k}_accuracy"] for k in (1, 5, 10, 50, 100)] == sorted(
        m[f"factorized_top_{k}_accuracy"] for k in (1, 5, 10, 50, 100)
    )
    assert 0 < m["recall_at_10_sequential"] <= m["recall_at_100_sequential"] <= 1 and m["ndcg_at_10_sequential"] > 0
    # the two-tower refitted on train + val (the history EASE reads at test), and every pair with its paired interval
    assert 0 < m["recall_at_10_two_tower_trainval"] <= m["recall_at_100_two_tower_trainval"] <= 1
    assert m["ndcg_at_10_two_tower_trainval"] > 0
    pairs = [("two_tower", "ease"), ("two_tower_trainval", "ease"), ("sequential", "ease"), ("sequential", "two_tower")]
    for (a, b), metric in itertools.product([*pairs, ("two_tower", "popularity")], RETRIEVAL_GAP_METRICS):
        gap = f"{metric}_{a}_minus_{b}"
        assert m[f"{gap}_low"] <= m[gap] <= m[f"{gap}_high"]
        assert m[gap] == pytest.approx(m[f"{metric}_{a}"] - m[f"{metric}_{b}"])
    for given in (5, 10):
        for model in ("popularity", "ease", "sequential"):
            assert 0 < m[f"recall_at_10_foldin{given}_{model}"] <= 1
    assert m["split_strategy"] == "random" and m["sequential_scann_overlap_at_100"] > 0.5
    # the negatives: every variant trained and scored, the one with the best val Recall@100 served as two_tower
    variants = ("inbatch_logq", "mixed", "bpr_popular")
    assert m["two_tower_negatives"] == max(variants, key=lambda v: m[f"val_recall_at_100_two_tower_{v}"])
    for variant in variants:
        assert 0 < m[f"recall_at_10_two_tower_{variant}"] <= m[f"recall_at_100_two_tower_{variant}"] <= 1
        assert m[f"ndcg_at_10_two_tower_{variant}"] > 0
    assert m["recall_at_100_two_tower"] == m[f"recall_at_100_two_tower_{m['two_tower_negatives']}"]
    for variant in set(variants) - {m["two_tower_negatives"]}:  # each other variant against the chosen, paired
        for metric in RETRIEVAL_GAP_METRICS:
            gap = f"{metric}_two_tower_{variant}_minus_two_tower"
            assert m[f"{gap}_low"] <= m[gap] <= m[f"{gap}_high"]
            assert m[gap] == pytest.approx(m[f"{metric}_two_tower_{variant}"] - m[f"{metric}_two_tower"])
    assert not any(f"two_tower_{m['two_tower_negatives']}_minus_two_tower" in key for key in m)  # not with itself
    assert m["retrieval_index"] == m["sequential_retrieval_index"] == "scann"
    for artifact in (
        "retrieval_model",
        "movie_embeddings",
        "bruteforce_index",
        "served_index",
        "sequential_model",
        "sequential_movie_embeddings",
        "sequential_served_index",
        "sequential_bruteforce_index",
    ):
        stage, filename = run_all.ARTIFACTS[artifact]
        assert (smoke_run / stage / filename).exists()


def test_smoke_multitask_sweep(smoke_run):
    """05b: a joint model per weight pair, one chosen on val, refitted and scored once; both fits saved and reloadable."""
    m, rating = metrics(smoke_run, "05b_multitask"), metrics(smoke_run, "04_two_tower_rating")
    settings = ("r1_t0", "r0_t1", "r1_t0p3")  # params/smoke.yaml's weight pairs
    for key in settings:
        assert 0 < m[f"val_rmse_multitask_{key}"] < 2 and 0 < m[f"val_recall_at_100_multitask_{key}"] <= 1
        assert 1 <= m[f"multitask_best_epoch_{key}"] <= 4  # params/smoke.yaml: max_epochs
        assert 0 < m[f"recall_at_10_multitask_{key}"] <= m[f"recall_at_100_multitask_{key}"] <= 1
    assert m["multitask_weights"] in ("1,0", "0,1", "1,0.3") and m["multitask_qualified"] in (0, 1)
    chosen = "r" + m["multitask_weights"].replace(",", "_t").replace(".", "p")
    if m["multitask_qualified"]:  # within the tolerance of the rating specialist's val RMSE: the best val recall
        fits = [k for k in settings if m[f"val_rmse_multitask_{k}"] <= m["val_rmse_specialist"] + 0.005]
        assert chosen == max(fits, key=lambda k: (m[f"val_recall_at_100_multitask_{k}"], -m[f"val_rmse_multitask_{k}"]))
    else:  # none is: the lowest val RMSE
        assert chosen == min(settings, key=lambda k: m[f"val_rmse_multitask_{k}"])
    assert 0.5 < m["rmse_multitask"] < 2 and 0 < m["recall_at_10_multitask"] <= m["recall_at_100_multitask"] <= 1
    assert m["rmse_specialist"] == pytest.approx(rating["rmse_two_tower"])  # 04's served model on the same test
    assert m["recall_at_100_specialist"] == pytest.approx(metrics(smoke_run, "05_retrieval")["recall_at_100_two_tower"])
    assert m["multitask_rmse_gap"] == pytest.approx(m["rmse_multitask"] - m["rmse_specialist"])
    ratio = m[f"recall_at_100_multitask_{chosen}"] / m["recall_at_100_specialist"]  # both fitted on train
    assert m["multitask_recall_at_100_ratio"] == pytest.approx(ratio)
    for artifact in ("multitask_model", "multitask_model_train"):
        stage, filename = run_all.ARTIFACTS[artifact]
        assert (smoke_run / stage / filename).is_dir()
    assert len(list((smoke_run / "05b_multitask").glob("multitask_tradeoff_*.png"))) == 2


def test_smoke_two_stage_metrics(smoke_run):
    m = metrics(smoke_run, "06_retrieval_ranking")
    for strategy in ("retrieval_only", "ease", "two_stage", "learned", "lambdarank", "dcn", "lambdarank_no_ease"):
        assert 0 < m[f"recall_at_10_{strategy}"] <= 1 and 0 < m[f"ndcg_at_10_{strategy}"] <= 1
        assert 0 < m[f"coverage_at_10_{strategy}"] <= 1 and m[f"novelty_{strategy}"] > 0
    assert m["served_ranker"] == "lambdarank" and m["ndcg_at_10_learned"] == m["ndcg_at_10_lambdarank"]
    # every row against retrieval alone and EASE: the mean difference inside its 95% paired bootstrap interval
    rows = ("learned", "lambdarank", "dcn", "two_stage", "lambdarank_no_ease")
    for name, base, metric in itertools.product(rows, ("retrieval_only", "ease"), ("recall_at_10", "ndcg_at_10")):
        gap = f"{metric}_{name}_minus_{base}"
        assert m[f"{gap}_low"] <= m[gap] <= m[f"{gap}_high"]
        assert m[gap] == pytest.approx(m[f"{metric}_{name}"] - m[f"{metric}_{base}"])
    assert m["ndcg_at_10_learned_minus_ease_low"] == m["ndcg_at_10_lambdarank_minus_ease_low"]
    assert "ndcg_at_10_ease_minus_ease" not in m
    # the synthetic users' choices follow taste: the learned rankers must beat the rating-ordered list
    assert min(m["ndcg_at_10_lambdarank"], m["ndcg_at_10_dcn"]) > m["ndcg_at_10_two_stage"]
    assert 0 < m["candidate_recall_at_100"] <= m["candidate_recall_merged_test"] <= 1
    # the three candidate sources (online.ease_candidates, online.joint_candidates), each inside the merged set
    for source in ("ease", "joint"):
        assert 0 < m[f"candidate_recall_{source}_test"] <= m["candidate_recall_merged_test"]
    candidates = pd.read_parquet(smoke_run / "06_retrieval_ranking" / "candidates.parquet")
    assert (candidates["source"].astype(str).str.contains("joint")).any() and (candidates["joint_rank"] > 0).any()
    assert 0 < m["recommend_p50_ms"] <= m["recommend_p99_ms"]
    assert 0 < m["recommend_for_history_p50_ms"] <= m["recommend_for_history_p99_ms"]
    assert m["served_retriever"] == "two_tower"
    assert m["retrieval_index"] == "scann"
    # what DCN-v2's first cross layer learned, against LightGBM's gain
    assert -1 <= m["dcn_lightgbm_importance_spearman"] <= 1 and 0 <= m["dcn_lightgbm_top5_overlap"] <= 5
    assert " x " in m["dcn_top_cross_pair"]
    assert (smoke_run / "06_retrieval_ranking" / "feature_store").is_dir()
    assert (smoke_run / "06_retrieval_ranking" / "ranker" / "ranker.json").exists()


def test_candidate_sources_are_compared_on_val_users_nothing_was_fitted_or_chosen_on(smoke_run, tmp_path):
    """benchmarks/candidate_sources_val.py: two runs that differ in `online` only, LambdaRank refitted as 06 fits it."""
    from benchmarks import candidate_sources_val as bench
    from recsys.retrieval.candidates import SOURCE_DTYPE

    # the base: the smoke run as if 06 had run without the joint source (its val candidates without the joint
    # model's movies or ranks)
    base = tmp_path / "base"
    shutil.copytree(smoke_run, base)
    manifest = json.loads((base / "manifest.json").read_text())
    manifest["params"]["online"]["joint_candidates"] = False
    (base / "manifest.json").write_text(json.dumps(manifest))
    saved = base / "06_retrieval_ranking" / "val_candidates.parquet"
    table = pd.read_parquet(saved)
    table = table[(table["retrieval_rank"] > 0) | (table["ease_rank"] > 0)].assign(joint_rank=0, joint_score=np.nan)
    label = np.where(
        table["retrieval_rank"] > 0, np.where(table["ease_rank"] > 0, "retrieval+ease", "retrieval"), "ease"
    )
    table.assign(source=pd.Categorical(label, dtype=SOURCE_DTYPE)).to_parquet(saved)
    out = tmp_path / "candidate_sources_val.json"
    assert bench.main(["--base", str(base), "--other", str(smoke_run), "--bootstrap", "50", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["differing_online"] == {"joint_candidates": [False, True]}
    summaries = result["summaries"]
    assert "candidate_recall_joint" not in summaries["base"] and summaries["other"]["candidate_recall_joint"] > 0
    assert summaries["base"]["candidates_per_user"] < summaries["other"]["candidates_per_user"]
    assert summaries["base"]["candidate_recall_merged"] <= summaries["other"]["candidate_recall_merged"]
    assert summaries["base"]["scored_users"] == summaries["other"]["scored_users"] > 0
    for metric, row in result["other_minus_base"].items():
        difference = summaries["other"][metric] - summaries["base"][metric]
        assert row["low"] <= row["difference"] <= row["high"] and row["difference"] == pytest.approx(difference)
    assert not [key for summary in summaries.values() for key in summary if "test" in key]  # val alone
    params = json.loads((smoke_run / "manifest.json").read_text())["params"]
    with pytest.raises(SystemExit, match="differ beyond `online`, in \\['seed'\\]"):
        bench.check_comparable(params, {**params, "seed": 1})
    with pytest.raises(SystemExit, match="same online settings"):
        bench.check_comparable(params, params)


def test_ranker_learning_curve_fits_lambdarank_on_shares_of_06s_training_users_and_scores_val(smoke_run, tmp_path):
    """benchmarks/ranker_learning_curve.py: seeded shares of 06's training users, the same stopping and scored users."""
    from benchmarks import candidate_sources_val
    from benchmarks import ranker_learning_curve as bench

    out = tmp_path / "curve.json"
    argv = ["--run", str(smoke_run), "--fractions", "1", "0.5", "--repeats", "2", "--out", str(out)]
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    fits = result["fits"]
    assert [(fit["fraction"], fit["draw"]) for fit in fits] == [(0.5, 0), (0.5, 1), (1.0, 0)]
    params = json.loads((smoke_run / "manifest.json").read_text())["params"]
    stage = candidate_sources_val.val_stage(smoke_run, params)
    training = int(stage.train.sum())
    assert [fit["users"] for fit in fits] == [round(training / 2)] * 2 + [training]
    assert result["scored_users"] == int(stage.scored.sum()) > 0 and result["stop_users"] == int(stage.stop.sum()) > 0
    assert not (stage.scored & (stage.stop | stage.train)).any()  # scored users are neither fitted nor stopped on
    # the whole share is 06's fit as candidate_sources_val.py makes it: the same users, grid and scores
    _, summary = candidate_sources_val.held_out_lists(smoke_run, params)
    assert fits[-1]["ndcg_at_10"] == pytest.approx(summary["ndcg_at_10"], abs=1e-12)
    assert fits[-1]["trees"] == summary["trees"]
    half = result["per_fraction"][0]
    assert half["draws"] == 2 and half["ndcg_at_10_mean"] == pytest.approx(
        (fits[0]["ndcg_at_10"] + fits[1]["ndcg_at_10"]) / 2
    )
    assert np.isfinite(result["ndcg_at_10_per_doubling"])
    keys = [*result, *(key for row in [*fits, *result["per_fraction"]] for key in row)]
    assert not [key for key in keys if "test" in key]  # val alone
    with pytest.raises(SystemExit, match=r"in \(0, 1\], got \[0.0, 1.5\]"):
        bench.check_fractions([0.0, 0.5, 1.5])
    with pytest.raises(SystemExit, match="--repeats must be at least 1"):
        bench.main(["--run", str(smoke_run), "--repeats", "0", "--out", str(out)])


def test_retrieval_val_grid_trains_each_setting_as_05_does_and_compares_it_with_ease_on_val(smoke_run, tmp_path):
    """benchmarks/retrieval_val_grid.py: the run's own settings reproduce 05's val numbers; a changed one is trained."""
    from benchmarks import retrieval_val_grid as bench

    out = tmp_path / "grid.json"
    ids_only = {"features": ["ids"], "epochs": 2}
    argv = ["--run", str(smoke_run), "{}", json.dumps(ids_only), "--prior-grid", "0.2", "--out", str(out)]
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    m05 = metrics(smoke_run, "05_retrieval")
    assert result["ease_val"]["ease_lambda"] == m05["ease_lambda"]  # tuned on val over the same grid as 05's
    same, changed = result["settings"]
    assert same["setting"] == {} and changed["setting"] == ids_only
    assert result["prior_grid"] == [0.0, 0.2]  # the model as trained (0) is scored even when the grid leaves it out
    # the run's first variant, trained as 05 trains it: its val Recall@100 without the prior is 05's
    assert same["recall_at_100_no_prior"] == pytest.approx(m05["val_recall_at_100_two_tower_inbatch_logq"], abs=1e-6)
    assert changed["epochs"] <= 2 and 1 <= changed["best_epoch"] <= changed["epochs"]
    for row in (same, changed):
        assert row["list_prior"] in (0.0, 0.2) and 0 <= row["recall_at_10"] <= 1
        assert row["recall_at_10_over_ease"] == pytest.approx(row["recall_at_10"] / result["ease_val"]["recall_at_10"])
    assert not [key for row in result["settings"] for key in row if "test" in key]  # val alone
    with pytest.raises(SystemExit, match="is not JSON"):
        bench.settings_of(["{embedding_dim: 8}"], {"embedding_dim": 64})
    with pytest.raises(SystemExit, match=r"unknown: \['embeding_dim'\]"):
        bench.settings_of(['{"embeding_dim": 8}'], {"embedding_dim": 64})
    with pytest.raises(SystemExit, match="must be a JSON object"):
        bench.settings_of(["[8]"], {"embedding_dim": 64})


def test_request_latency_is_measured_on_the_run_as_the_service_loads_it(smoke_run, tmp_path):
    """benchmarks/recommend_latency.py: `recommend`, its parts and `recommend_for_history`, timed on a finished run."""
    from benchmarks import recommend_latency

    out, lists = tmp_path / "recommend_latency.json", tmp_path / "lists.npz"
    assert (
        recommend_latency.main(["--run", str(smoke_run), "--passes", "2", "--out", str(out), "--lists", str(lists)])
        == 0
    )
    result = json.loads(out.read_text())
    assert len(result["passes"]) == 2 and result["index_kind"] == "scann" and result["ranker"] == "lambdarank"
    for name in ("recommend", "index_search", "candidates", "ranking", "recommend_for_history"):
        assert 0 < result[f"{name}_p50_ms"] <= result[f"{name}_p99_ms"]
        assert result[f"{name}_p50_ms"] == np.median([p[f"{name}_p50_ms"] for p in result["passes"]])
    # the saved lists are the served ones: `recommend` gives each drawn user theirs
    from recsys.service.served_run import ServedRun
    from recsys.serving import recommender

    saved = np.load(lists)
    served = ServedRun.load(smoke_run)
    for user in np.unique(saved["user_id"])[:5]:
        expected = recommender.recommend(int(user), 10, **served.recommend_args)["movie_id"].to_numpy()
        np.testing.assert_array_equal(saved["movie_id"][saved["user_id"] == user], expected)


EXPLORATION_KEYS = ("recall_at_10", "ndcg_at_10", "coverage_at_10", "novelty", "intra_list_diversity", "gini")


def settings_of(m: dict, prefix: str = "") -> list[str]:
    return [k.removeprefix(f"{prefix}recall_at_10_") for k in m if k.startswith(f"{prefix}recall_at_10_")]


def test_smoke_exploration_metrics(smoke_run):
    # 07 and 08 choose on val: the sweep is in the val_ keys; test holds the chosen setting and its reference only
    m7 = metrics(smoke_run, "07_explore_weighted_sampling")
    assert m7["setting_chosen_on"] == "val" and set(settings_of(m7)) == {"deterministic", m7["setting_chosen"]}
    assert "deterministic" in settings_of(m7, "val_") and len(settings_of(m7, "val_")) >= 2
    for setting in settings_of(m7, "val_"):
        assert all(f"val_{key}_{setting}" in m7 for key in EXPLORATION_KEYS + ("kendall_tau_mean",))
    temps = sorted((float(s.removeprefix("temp_")), s) for s in settings_of(m7, "val_") if s.startswith("temp_"))
    # hotter sampling strays further from the ranked order and spreads recommendations wider
    taus = [m7[f"val_kendall_tau_mean_{s}"] for _, s in temps]
    assert m7["val_kendall_tau_mean_deterministic"] == 1.0 and taus == sorted(taus, reverse=True)
    assert m7[f"val_coverage_at_10_{temps[-1][1]}"] > m7["val_coverage_at_10_deterministic"]

    m8 = metrics(smoke_run, "08_explore_gaussian_noise")
    assert m8["setting_chosen_on"] == "val" and m8["setting_chosen"] in settings_of(m8)
    for view in ("", "served_"):
        assert m8[f"val_overlap_at_10_with_noiseless_{view}sigma_0"] == 1.0
        sigmas = sorted(
            (float(s.removeprefix(f"{view}sigma_")), s)
            for s in settings_of(m8, "val_")
            if s.startswith(f"{view}sigma_")
        )
        overlaps = [m8[f"val_overlap_at_10_with_noiseless_{s}"] for _, s in sigmas]
        assert overlaps == sorted(overlaps, reverse=True) and overlaps[-1] < 1.0
    # noise on the retrieval vectors widens retrieval's lists; the served list is reordered by a ranker
    # whose features are noiseless, so its coverage need not grow (the overlaps above show it changes)
    swept = [s for s in settings_of(m8, "val_") if s.startswith("sigma_")]
    noisiest = max(swept, key=lambda s: float(s[len("sigma_") :]))
    assert m8[f"val_coverage_at_10_{noisiest}"] > m8["val_coverage_at_10_sigma_0"]

    m9 = metrics(smoke_run, "09_explore_least_viewed")
    (explore,) = [s for s in settings_of(m9) if s.startswith("least_viewed")]
    assert m9["least_viewed_share_retrieval_ranked"] == 0.0
    assert 0 < m9[f"least_viewed_share_{explore}"] <= 1
    assert m9[f"novelty_{explore}"] > m9["novelty_retrieval_ranked"]


def test_new_movies_are_kept_out_of_every_model_and_ranked_for_their_raters(smoke_run):
    """Item cold start: 01 sets the new movies' ratings apart, 09 ranks the new movies for the users who rated them."""
    m1, m9 = metrics(smoke_run, "01_preprocess"), metrics(smoke_run, "09_explore_least_viewed")
    stage = smoke_run / "01_preprocess"
    new = pd.read_parquet(stage / "new_movie_interactions.parquet")
    interactions = pd.read_parquet(stage / "interactions.parquet", columns=["user_id", "movie_id", "split"])
    foldin = pd.read_parquet(stage / "foldin_interactions.parquet", columns=["movie_id"])
    assert m1["n_new_movies"] >= new["movie_id"].nunique() > 0 and m1["n_new_movie_ratings"] == len(new)
    assert (
        not new["movie_id"].isin(interactions["movie_id"]).any() and not new["movie_id"].isin(foldin["movie_id"]).any()
    )
    assert (new["split"] == "test").all()
    catalogue, new_movies = (pd.read_parquet(stage / f"{name}.parquet") for name in ("movies", "new_movies"))
    assert (
        set(new_movies["movie_id"]) >= set(new["movie_id"])
        and not new_movies["movie_id"].isin(catalogue["movie_id"]).any()
    )
    assert new["user_id"].isin(interactions.loc[interactions["split"] == "test", "user_id"]).all()
    for model in ("two_tower", "genre_profile", "random"):
        assert 0 <= m9[f"ndcg_at_10_cold_{model}"] <= 1 and 0 <= m9[f"recall_at_10_cold_{model}"] <= 1
    for metric in ("recall_at_10", "ndcg_at_10"):
        low, high = (m9[f"{metric}_cold_two_tower_minus_genre_profile_{b}"] for b in ("low", "high"))
        assert low <= m9[f"{metric}_cold_two_tower_minus_genre_profile"] <= high
    # the synthetic movie factors lean on genres: the two-tower's feature-only vectors rank the new movies above chance
    assert m9["ndcg_at_10_cold_two_tower"] > m9["ndcg_at_10_cold_random"]
    assert not [row for row in strategy_table(smoke_run) if row["strategy"].startswith("cold")]


SIMULATED_POLICIES = ("served", "weighted_sampling", "gaussian_noise", "least_viewed", "popularity", "random")


def test_simulation_runs_every_policy_in_two_worlds_and_judges_by_paired_intervals(smoke_run):
    m10 = metrics(smoke_run, "10_simulation")
    for policy in SIMULATED_POLICIES:
        for key in ("accepted_per_user", "coverage_final", "gini_final", "accepted_popularity"):
            assert 0 <= m10[f"{key}_{policy}"] <= 1 or key == "accepted_per_user"
            assert f"{key}_{policy}_under_puresvd" in m10
    assert m10["rounds"] == 3 and m10["simulated_users"] > 0
    assert m10["n_hidden_models"] == 2 and m10["n_seeds"] == 3 and m10["calibrated_on"] == "test"
    # the served list is accepted far more often than random movies; random reaches the most of the catalogue
    assert m10["accepted_per_user_served"] > 3 * m10["accepted_per_user_random"]
    assert m10["coverage_final_random"] > m10["coverage_final_served"] > m10["coverage_final_popularity"]
    assert m10["calibration_reference_rate"] > m10["calibration_background_rate"] > 0
    # every policy is compared with the served list under both worlds; the verdict follows the rule
    for policy in SIMULATED_POLICIES[1:]:
        for measure in ("accepted_per_user", "coverage_final"):
            name = f"{measure}_{policy}_minus_served"
            bounds = [(m10[f"{name}_under_{h}_low"], m10[f"{name}_under_{h}_high"]) for h in ("ease", "puresvd")]
            assert all(low <= m10[f"{name}_under_{h}"] <= high for (low, high), h in zip(bounds, ("ease", "puresvd")))
            expected = (
                "higher"
                if all(low > 0 for low, _ in bounds)
                else "lower"
                if all(high < 0 for _, high in bounds)
                else "no difference shown"
            )
            assert m10[f"{name}_verdict"] == expected
    assert m10["accepted_per_user_random_minus_served_verdict"] == "lower"
    assert m10["coverage_final_random_minus_served_verdict"] == "higher"
    rounds = pd.read_parquet(smoke_run / "10_simulation" / "rounds.parquet")
    assert sorted(rounds["seed"].unique()) == [42, 43, 44] and set(rounds["hidden"]) == {"ease", "puresvd"}
    assert len(rounds) == 2 * 3 * 3 * len(SIMULATED_POLICIES)
    # 07 and 08 chose the settings the simulation serves
    assert metrics(smoke_run, "07_explore_weighted_sampling")["chosen_temperature"] >= 0
    assert (smoke_run / "08_explore_gaussian_noise" / "setting.json").exists()
    index = (smoke_run / "reports" / "index.html").read_text()
    assert "Closed-loop simulation" in index and 'src="summary_coverage_over_rounds.png"' in index
    assert "no difference shown" in index or "higher" in index
    assert (smoke_run / "reports" / "summary_coverage_over_rounds.png").stat().st_size > 10_000


def run_beside(smoke_run: Path, run_name: str, *args: str) -> Path:
    """Another run on params/smoke.yaml (same data and seed) beside the smoke run, with these overrides."""
    return run_on_smoke_params(smoke_run.parent, run_name, *args)


def reuse_from(smoke_run: Path, run_name: str, stages: tuple[str, ...]) -> Path:
    """A new run folder beside the smoke run that starts with the smoke run's outputs (and records) of `stages`.

    The runner then refuses to go on if anything it reruns reads these outputs under other parameter values
    (provenance), so sharing upstream notebooks cannot hide a difference that matters.
    """
    folder = smoke_run.parent / run_name
    manifest = json.loads((smoke_run / "manifest.json").read_text())
    for stage in stages:
        shutil.copytree(smoke_run / stage, folder / stage)
    manifest["notebooks"] = [entry for entry in manifest["notebooks"] if entry["name"] in stages]
    (folder / "manifest.json").write_text(json.dumps({**manifest, "run_name": run_name}))
    return folder


@pytest.fixture(scope="module")
def distributed_run(smoke_run) -> Path:
    """04-05 with both two-tower models trained on 2 local workers (MultiWorkerMirroredStrategy), on the smoke run's 01-03."""
    reuse_from(smoke_run, "smoke-distributed", ("01_preprocess", "02_eda", "03_baselines"))
    overrides = ["-p", "distribute.strategy=multi_worker", "-p", "distribute.workers=2"]
    # one negatives variant, the one the smoke run chose (the others train on two workers in tests/models/test_negatives.py)
    overrides += ["-p", f"retrieval.negatives=[{metrics(smoke_run, '05_retrieval')['two_tower_negatives']}]"]
    # 05 builds a FAISS IVF index (the smoke run a ScaNN one, the temporal chain a FAISS HNSW one)
    overrides += ["-p", "retrieval.index=faiss_ivf"]
    # 04's feature ablation trains in the notebook's process whatever the strategy: the smoke run has it
    overrides += ["-p", "rating.ablation=false"]
    # one rating setting, the one the smoke run chose on val (a grid point per job is tested in
    # `test_distributed_protocol_runs_each_grid_point_as_its_own_job`)
    chosen = metrics(smoke_run, "04_two_tower_rating")["rating_id_learning_rate"]
    overrides += ["-p", f"rating.val_grid.id_learning_rate=[{chosen}]"]
    return run_beside(smoke_run, "smoke-distributed", *overrides, "--from", "04", "--until", "05")


def test_notebooks_train_on_two_workers_as_well_as_in_one_process(distributed_run, smoke_run):
    """Notebooks 04 and 05 with `distribute.strategy: multi_worker`: same protocol, same quality, said in the reports;
    05 serving from a FAISS IVF index."""
    m4, one4 = metrics(distributed_run, "04_two_tower_rating"), metrics(smoke_run, "04_two_tower_rating")
    m5, one5 = metrics(distributed_run, "05_retrieval"), metrics(smoke_run, "05_retrieval")
    assert m4["trained_by"].startswith("MultiWorkerMirroredStrategy, 2 workers") and m4["train_workers"] == 2
    assert m5["two_tower_trained_by"] == m4["trained_by"] and m5["two_tower_train_workers"] == 2
    assert abs(m4["rmse_two_tower"] - one4["rmse_two_tower"]) < 0.02, (m4["rmse_two_tower"], one4["rmse_two_tower"])
    assert abs(m5["recall_at_100_two_tower"] - one5["recall_at_100_two_tower"]) < 0.02
    assert one5["two_tower_negatives"] == m5["two_tower_negatives"]
    assert m5["retrieval_index"] == "faiss_ivf" and 0 < m5["faiss_ivf_overlap_at_50"] <= 1
    assert (distributed_run / "05_retrieval" / "served_index").is_dir()
    two_tower_job = f"two_tower_{m5['two_tower_negatives']}"
    for stage, jobs in (("04_two_tower_rating", ("selected", "refit")), ("05_retrieval", (two_tower_job,))):
        for job in jobs:
            folder = distributed_run / stage / "distributed_jobs" / job
            assert (folder / "result.json").exists() and (folder / "logs" / "attempt-0" / "worker-1.log").exists()
            assert not (folder / "backup").exists()  # the epoch backups go once the job has ended
    report = (distributed_run / "reports" / "04_two_tower_rating.html").read_text()
    assert "trained by: MultiWorkerMirroredStrategy, 2 workers" in report


def test_run_summary_compares_every_strategy(smoke_run):
    index = (smoke_run / "reports" / "index.html").read_text()
    assert "Comparison across the run" in index and 'src="summary_tradeoff.png"' in index
    assert (smoke_run / "reports" / "summary_tradeoff.png").stat().st_size > 10_000
    chosen = [
        metrics(smoke_run, stage)["setting_chosen"]
        for stage in ("07_explore_weighted_sampling", "08_explore_gaussian_noise")
    ]
    for name in ("two_tower", "svd", "two_stage", "ease", "deterministic", *chosen):  # 07/08: the chosen setting
        assert f">{name}<" in index


def test_reports_render_in_a_real_browser(smoke_run):
    """Headless Chromium loads the index and a notebook report; every image and link resolves."""
    browser = chromium_binary()
    if browser is None:
        pytest.skip("Chromium is not installed: `make chromium` installs Debian's package for this check")
    reports = smoke_run / "reports"
    for page in (reports / "index.html", reports / "04_two_tower_rating.html"):
        flags = ["--headless", *CHROMIUM_FLAGS, f"--user-data-dir={smoke_run / '.chromium'}"]
        dom = subprocess.run(
            [browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True
        ).stdout
        parser = LinkCollector()
        parser.feed(dom)
        assert parser.images, f"{page.name} shows no image"
        for src in parser.images:
            assert src.startswith("data:image/") or (page.parent / unquote(src)).is_file(), (
                f"{page.name}: image {src[:80]}"
            )
        for href in parser.links:
            if href.startswith("#"):
                assert href[1:] in parser.ids, f"{page.name}: anchor {href} has no target"
            elif not href.startswith(("http://", "https://", "mailto:")):
                assert (page.parent / unquote(href.split("#")[0])).is_file(), f"{page.name}: link {href}"
        screenshot = smoke_run / f"screenshot_{page.stem}.png"
        subprocess.run(
            [browser, *flags, "--window-size=1280,2400", f"--screenshot={screenshot}", page.as_uri()],
            capture_output=True,
            timeout=120,
            check=True,
        )
        assert screenshot.stat().st_size > 20_000, f"{screenshot} looks blank"


class LinkCollector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.ids = [], [], set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img" and attrs.get("src"):
            self.images.append(attrs["src"])
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])


def test_serving_index_benchmark_builds_every_kind_over_a_finished_run(smoke_run, tmp_path):
    """benchmarks/serving_indexes.py: 05's comparison for each kind of served index, each reloaded the same."""
    from benchmarks import serving_indexes

    out = tmp_path / "serving_indexes.json"
    result = serving_indexes.main(["--run", str(smoke_run), "--kinds", "faiss_ivf", "bruteforce", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    kinds = result["kinds"]
    assert set(kinds) == {"faiss_ivf", "bruteforce"} and all(row["reloaded_the_same"] for row in kinds.values())
    assert (
        kinds["bruteforce"]["bruteforce_overlap_at_50"] == 1.0
        and 0 < kinds["faiss_ivf"]["faiss_ivf_overlap_at_50"] <= 1
    )
    assert result["negatives"] == metrics(smoke_run, "05_retrieval")["two_tower_negatives"]
    assert not [key for row in kinds.values() for key in row if "val" in key.split("_")]  # scored on test only
