#!/usr/bin/env python
"""Latency of one request on a finished run: `recommend` (and its parts) and `recommend_for_history`.

    python benchmarks/recommend_latency.py --run artifacts/<run> [--passes 3] [--lists lists.npz]

Loads the run's serving path as the service does (`ServedRun.load`: the saved indexes, feature
store, candidate sources and ranker, in a fresh process) and times requests as notebook 06 does
(`latency.measure_latency`, 20 warm-up requests): `online.latency_requests` users drawn from the
run's users with the seed + 1, and as many fold-in histories (each a fold-in user's first 10
films) with the seed + 2. Each pass times the same requests again; the figure to read is the
median pass (the two cores may be shared). The parts of a `recommend` request are timed on the
same users: the served index's search (`retrieve_batch`), the merged candidates
(`retrieve_candidates`: the index, EASE's list, the merge) and the ranking (`rank_candidates`).
`--lists` saves every drawn user's list, to compare two versions of the code on one run.
Writes benchmarks/results/recommend_latency.json with the load average at the start.
"""

from __future__ import annotations

import argparse
import json
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
from recsys.runs.registry import ARTIFACTS
from recsys.service.served_run import ServedRun
from recsys.serving import latency, recommender

K = 10


def _median(passes: list[dict], key: str) -> float:
    return float(np.median([p[key] for p in passes]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a run folder with 01-06 done")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--lists", type=Path, help="save each drawn user's list here (.npz)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "recommend_latency.json")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    if args.passes < 1:
        sys.exit("--passes must be at least 1")

    served = ServedRun.load(args.run)
    params = json.loads((args.run / "manifest.json").read_text())["params"]
    seed, requests_n = params["seed"], params["online"]["latency_requests"]
    interactions = pd.read_parquet(args.run / Path(*ARTIFACTS["interactions"]), columns=["user_id"])
    users = interactions["user_id"].drop_duplicates().sample(requests_n, random_state=seed + 1, replace=True).to_numpy()
    foldin = pd.read_parquet(args.run / Path(*ARTIFACTS["foldin_interactions"])).sort_values(["user_id", "position"])
    first_ten = foldin.groupby("user_id")["movie_id"].apply(lambda m: m.to_numpy()[:10])
    histories = first_ten.sample(requests_n, random_state=seed + 2, replace=True).to_list()

    rec = served.recommend_args
    store, index = rec["store"], rec["retrieval_index"]
    sources = {name: rec[name] for name in ("ease", "joint") if name in rec}

    def index_search(user: int) -> None:
        index.retrieve_batch([user], rec["n_candidates"], [store.seen_movies(user)])

    def candidates(user: int) -> pd.DataFrame:
        return recommender.retrieve_candidates(
            [user], rec["n_candidates"], store=store, retrieval_index=index, **sources
        )

    tables = {int(u): candidates(int(u)) for u in np.unique(users)}  # the ranking step's inputs, made once
    requests = {
        "recommend": lambda u: recommender.recommend(int(u), K, **rec),
        "index_search": lambda u: index_search(int(u)),
        "candidates": lambda u: candidates(int(u)),
        "ranking": lambda u: recommender.rank_candidates(tables[int(u)], K, store=store, ranker=rec["ranker"]),
    }
    passes = []
    for _ in range(args.passes):
        timed = {name: latency.measure_latency(request, users) for name, request in requests.items()}
        if served.history_args is not None:
            timed["recommend_for_history"] = latency.measure_latency(
                lambda h: recommender.recommend_for_history(h, K, **served.history_args), histories
            )
        passes.append({f"{name}_{key}": value[key] for name, value in timed.items() for key in ("p50_ms", "p99_ms")})
    result = {
        "run": str(args.run),
        "requests": len(users),
        "passes": passes,
        **{key: _median(passes, key) for key in passes[0]},
        "served_retriever": served.served_retriever,
        "index_kind": getattr(getattr(index, "index", None), "kind", None),
        "ranker": rec["ranker"].name,
        "load_average_at_start": load,
    }
    if args.lists is not None:
        lists = recommender.recommend_batch(np.unique(users), K, **rec)
        np.savez(args.lists, user_id=lists["user_id"].to_numpy(), movie_id=lists["movie_id"].to_numpy())
    write_json(args.out, result)
    for key in passes[0]:
        print(f"{key:36s} " + "  ".join(f"{p[key]:6.2f}" for p in passes) + f"   median {result[key]:6.2f}")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    start = time.perf_counter()
    code = main()
    print(f"({time.perf_counter() - start:.0f} s)")
    sys.exit(code)
