"""The ANN benchmark's exact baselines: FAISS IndexFlatIP beside TF's BruteForce, and ScaNN held to the faster one."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from recsys.core.io import PROJECT_ROOT


def _run(qps: float, recall: float = 1.0) -> dict:
    return {"qps": qps, "recall_at_10": recall}


def test_exact_baseline_is_the_fastest_exact_method_and_scann_is_held_to_it():
    from benchmarks.ann.report import exact_baseline

    runs = {"bruteforce": _run(20.0), "faiss_flat": _run(80.0), "scann": _run(900.0, 0.955)}
    runs |= {"faiss_hnsw": _run(120.0, 0.97), "faiss_ivfpq": _run(300.0, 0.93)}  # IVF-PQ misses the recall
    result = exact_baseline(runs)
    assert result["exact_best_method"] == "faiss_flat" and result["exact_best_qps"] == 80.0
    assert result["scann_speedup_exact"] == pytest.approx(900.0 / 80.0)
    assert result["bruteforce_speedup_exact"] == pytest.approx(0.25)
    assert result["faiss_best_method"] == "faiss_hnsw"  # the fastest FAISS index at recall >= 0.95
    assert result["scann_exact_target_met"] is True
    # under 10x the fastest exact search, below the recall, or behind a FAISS index at the recall: not met
    assert exact_baseline({**runs, "scann": _run(790.0, 0.955)})["scann_exact_target_met"] is False
    assert exact_baseline({**runs, "scann": _run(900.0, 0.949)})["scann_exact_target_met"] is False
    assert exact_baseline({**runs, "faiss_hnsw": _run(950.0, 0.96)})["scann_exact_target_met"] is False
    assert exact_baseline({"scann": _run(900.0)})["exact_best_method"] is None  # no exact method ran


def test_a_small_run_measures_both_exact_searches_and_reports_against_the_faster(tmp_path):
    out = tmp_path / "ann.json"
    command = [sys.executable, "-m", "benchmarks.ann", "--n", "3000", "--clusters", "30", "--n-queries", "40"]
    command += ["--methods", "bruteforce", "faiss_flat", "scann", "--cache-dir", str(tmp_path / "cache")]
    command += ["--out", str(out), "--figure", str(tmp_path / "ann.png")]
    subprocess.run(command, cwd=PROJECT_ROOT, check=True, capture_output=True, text=True)
    result = json.loads(out.read_text())
    assert result["faiss_flat_recall_at_10"] == pytest.approx(1.0)  # exact: the same lists as TF's
    assert result["faiss_flat_settings"]["index"] == "IndexFlatIP"
    exact = {m: result[f"{m}_qps"] for m in ("bruteforce", "faiss_flat")}
    assert result["exact_best_method"] == max(exact, key=exact.get)
    assert result["exact_best_qps"] == max(exact.values())
    assert result["scann_speedup_exact"] == pytest.approx(result["scann_qps"] / result["exact_best_qps"])
    assert result["bruteforce_route"].startswith("TF matmul")  # today's TF figure stays a row
    assert (tmp_path / "ann.png").exists()
