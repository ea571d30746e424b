#!/usr/bin/env python
"""Latency of `recommender.recommend_for_history` and of `recommend` served by the sequential retriever.

    python benchmarks/serving_history.py [--run artifacts/temporal] [--requests 1000] [--seed 42]

Reads a finished run (05 and 06 done; any `retrieval.model`): the sequential model, its saved
served index (`retrieval.index`: ScaNN by default) and the serving feature store. Histories are the fold-in users' first 10 ratings
(people no model saw), sampled with replacement; each request is timed end to end (validation,
GRU query, index search, exclusion of the given movies, the result table) after 50 untimed
warm-up requests. Prints p50/p90/p99 and writes benchmarks/results/serving_history.json with the
load average at the start (the two cores may be shared).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import recsys  # noqa: E402,F401  (TF_USE_LEGACY_KERAS, quiet TF logs)
from recsys.core.io import write_json
from recsys.features.feature_store import FeatureStore
from recsys.models.sequential_model import load_sequential_model
from recsys.retrieval import indexes
from recsys.retrieval.history_queries import HistoryQueries
from recsys.runs.registry import ARTIFACTS
from recsys.serving import recommender


def artifact(run: Path, name: str) -> Path:
    stage, filename = ARTIFACTS[name]
    path = run / stage / filename
    if not path.exists():
        sys.exit(f"{path} is missing: run notebooks 01-06 into {run} first")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run", type=Path, default=ROOT / "artifacts" / "temporal", help="a run folder with 01-06 done"
    )
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    load = os.getloadavg()[0]

    model, vocabulary = load_sequential_model(artifact(args.run, "sequential_model"))
    index = indexes.load_index(artifact(args.run, "sequential_served_index"))
    store = FeatureStore.load(artifact(args.run, "feature_store"))
    interactions = pd.read_parquet(artifact(args.run, "interactions"))
    queries = HistoryQueries(model, vocabulary, interactions[interactions["split"] != "test"])
    foldin = pd.read_parquet(artifact(args.run, "foldin_interactions")).sort_values(["user_id", "position"])
    first_ten = foldin.groupby("user_id")["movie_id"].apply(lambda m: m.to_numpy()[:10]).to_list()
    rng = np.random.default_rng(args.seed)
    histories = [first_ten[i] for i in rng.integers(0, len(first_ten), args.requests + 50)]
    kwargs = {"store": store, "history_queries": queries, "retrieval_index": index}

    latencies = []
    for i, history in enumerate(histories):
        start = time.perf_counter()
        recommender.recommend_for_history(history, 10, **kwargs)
        if i >= 50:
            latencies.append((time.perf_counter() - start) * 1e3)
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
    result = {
        "run": str(args.run),
        "requests": len(latencies),
        "recommend_for_history_p50_ms": p50,
        "recommend_for_history_p90_ms": p90,
        "recommend_for_history_p99_ms": p99,
        "load_average_at_start": load,
    }
    print(f"recommend_for_history over {len(latencies)} requests: p50 {p50:.2f} ms, p90 {p90:.2f} ms, p99 {p99:.2f} ms")
    (ROOT / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    write_json(ROOT / "benchmarks" / "results" / "serving_history.json", result)


if __name__ == "__main__":
    main()
