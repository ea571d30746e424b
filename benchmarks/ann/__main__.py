"""The command line of the ANN benchmark: `python -m benchmarks.ann [...]` from the project root (see the package)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import benchmarks.ann
from benchmarks.ann.datasets import DEFAULT_CLUSTERS, HARDNESS_CANDIDATES, HARDNESS_QUERIES, ensure_dataset, hardness
from benchmarks.ann.launch import launch, run_methods
from benchmarks.ann.protocol import SINGLE_WARMUP
from benchmarks.ann.report import merge, plot, print_table
from benchmarks.ann.settings import METHODS, QUERY_SETS, RESULTS, ROOT
from benchmarks.ann.worker import SEARCHERS, run_worker
from recsys.core.io import write_json


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ann", description=benchmarks.ann.__doc__.split("\n\n")[0]
    )
    parser.add_argument("--n", "--n-candidates", dest="n", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--dataset-kind", choices=tuple(DEFAULT_CLUSTERS), default="overlap_skewed")
    parser.add_argument("--clusters", type=int, help="default: 20000 (overlap_skewed), 1000 (separated)")
    parser.add_argument("--n-queries", type=int, default=1000, help="in each of the tuning and measured sets")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="methods left out of --methods come from their last run on the same cached data, if any",
    )
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--hnsw-ef-construction", type=int, default=40)
    parser.add_argument("--cache-dir", type=Path, help="default: artifacts/ann-cache/<kind>-<n>-<dim>-<seed>/")
    parser.add_argument("--out", type=Path, default=RESULTS / "ann.json")
    parser.add_argument("--figure", type=Path, default=RESULTS / "ann.png")
    parser.add_argument("--worker", choices=("exact", *SEARCHERS), help="internal: run one method in this process")
    args = parser.parse_args()
    if args.worker:
        if args.cache_dir is None:
            parser.error("--worker needs --cache-dir")
        return args
    args.clusters = args.clusters or DEFAULT_CLUSTERS[args.dataset_kind]
    default_cache = ROOT / "artifacts" / "ann-cache" / f"{args.dataset_kind}-{args.n}-{args.dim}-{args.seed}"
    args.cache_dir = (args.cache_dir or default_cache).resolve()  # the workers run from ROOT
    if args.n < 1000 or args.clusters < 2:
        parser.error("--n must be at least 1000 and --clusters at least 2")
    if args.n_queries <= SINGLE_WARMUP:
        parser.error(f"--n-queries must exceed the {SINGLE_WARMUP} single-query warm-ups")
    return args


def main() -> int:
    args = parse_args()
    if args.worker:
        return run_worker(args)
    load_at_start = os.getloadavg()[0]
    spec = {
        "dataset_kind": args.dataset_kind,
        "n_candidates": args.n,
        "dim": args.dim,
        "clusters": args.clusters,
        "n_queries": args.n_queries,
        "seed": args.seed,
    }
    print(
        f"{args.n:,} candidates x {args.dim} dims ({args.n * args.dim * 4 / 1e9:.2f} GB, {args.dataset_kind}, "
        f"{args.clusters:,} clusters), 2 x {args.n_queries:,} queries; {os.cpu_count()} CPUs, load average "
        f"{load_at_start:.2f} at start; cache {args.cache_dir}",
        flush=True,
    )
    dataset_s = ensure_dataset(args.cache_dir, spec)
    print("data set: " + ("cached" if dataset_s is None else f"written in {dataset_s:.0f} s"), flush=True)
    truth_cached = all((args.cache_dir / f"truth_{s}.npy").exists() for s in QUERY_SETS)
    if not truth_cached and launch("exact", args) is None:
        return 1
    exact = args.cache_dir / "exact.json"
    sample = min(args.n, HARDNESS_CANDIDATES)
    hardness_stats = {
        kind: hardness(kind, args.clusters if kind == args.dataset_kind else clusters, args.dim, args.seed, sample)
        for kind, clusters in DEFAULT_CLUSTERS.items()
    }
    print(f"hardness on {sample:,} candidates x {HARDNESS_QUERIES} queries: {json.dumps(hardness_stats)}", flush=True)
    runs, failed = run_methods(args)
    context = {
        "load_average_at_start": load_at_start,
        "cache_dir": args.cache_dir,
        "dataset_write_s": dataset_s,
        "ground_truth": {**(json.loads(exact.read_text()) if exact.exists() else {}), "cached": truth_cached},
        "hardness": {"sample_candidates": sample, "sample_queries": HARDNESS_QUERIES, **hardness_stats},
        "failed_workers": failed,
    }
    result = merge(args, runs, context)
    out = write_json(args.out, result)
    if runs:
        plot(result, runs, args.figure)
    print_table(result, [m for m in METHODS if m in runs])
    print(f"written to {out}" + (f" and {args.figure}" if runs else ""))
    if failed:
        print(f"failed workers: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
