#!/usr/bin/env python
"""Every kind of served index (`retrieval.index`) over a finished run's two-tower, as notebook 05 builds and compares it.

    python benchmarks/serving_indexes.py [--run artifacts/bench-serve] [--kinds scann faiss_hnsw faiss_ivf bruteforce]

Reads a run with 05 done (by default artifacts/bench-serve, the ml-1m-half run `serve_load.py` makes
just before it under `make bench`): its saved two-tower (the negatives variant chosen on val), its movie
embeddings, the run's params (scann and faiss groups, seed) and its split. For each kind,
`index_comparison.build_index_pair` builds exact search and that index from the same vectors and
`compare_indexes` asks both for every test user's top k unseen movies, the code path 05 runs for
the kind it serves: overlap@k with exact, Recall@k of both, the users whose list came back short
(answered by exact search), build time, single-query latency and batch queries/s. Then the index
is saved, reloaded and must give the same lists (`IndexPair.save`). Writes
benchmarks/results/serving_indexes.json with the load average at the start (the two cores may be
shared): the choice of `retrieval.index` is a speed/agreement trade-off, not a quality one, so
nothing here is chosen on test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.serving_history import artifact  # noqa: E402  (a run's artifact, or exit saying what to run)
from recsys.core.io import write_json  # noqa: E402
from recsys.models.configs import RETRIEVAL_INDEXES, RetrievalConfig  # noqa: E402
from recsys.models.retrieval_model import load_retrieval_model, movie_embeddings  # noqa: E402
from recsys.retrieval import index_comparison, indexes  # noqa: E402
from recsys.training.retrieval_inputs import load_retrieval_inputs  # noqa: E402


def run_params(run: Path) -> dict:
    """The params the run was made with (its manifest)."""
    manifest = run / "manifest.json"
    if not manifest.exists():
        sys.exit(f"{manifest} is missing: {run} is not a run folder made by run_all.py")
    return json.loads(manifest.read_text())["params"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run", type=Path, default=ROOT / "artifacts" / "bench-serve", help="a run folder with 01-05 done"
    )
    parser.add_argument("--kinds", nargs="+", default=list(RETRIEVAL_INDEXES), choices=RETRIEVAL_INDEXES)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serving_indexes.json")
    args = parser.parse_args(argv)
    params = run_params(args.run)
    model, encoder = load_retrieval_model(artifact(args.run, "retrieval_model"))
    inputs = load_retrieval_inputs(
        lambda name: artifact(args.run, name), RetrievalConfig.from_params(params["retrieval"])
    )
    movie_ids, movie_vectors = movie_embeddings(model, encoder, inputs.movie_table)
    query_model = indexes.UserQueryModel(model, encoder, inputs.user_table)
    load = os.getloadavg()[0]
    rows = {}
    for kind in args.kinds:
        pair = index_comparison.build_index_pair(
            query_model, movie_ids, movie_vectors, params["scann"], params["seed"], kind=kind, faiss=params["faiss"]
        )
        comparison = index_comparison.compare_indexes(pair, inputs.matrices, split="test")
        with tempfile.TemporaryDirectory() as folder:
            same = pair.save(Path(folder) / "exact", Path(folder) / "served", inputs.matrices.user_ids[:200])
        rows[kind] = {
            **comparison.metrics(),
            "reloaded_the_same": bool(same),
        }
        print(f"{kind}: {comparison.describe()}; reloaded the same: {same}")
    result = {
        "run": str(args.run),
        "negatives": model.config.negatives,
        "n_test_users": int(len(inputs.matrices.held_out_rows("test"))),
        "load_average_at_start": load,
        "kinds": rows,
    }
    write_json(args.out, result)
    print(f"written: {args.out}")
    return result


if __name__ == "__main__":
    main()
