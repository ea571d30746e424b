#!/usr/bin/env python
"""The service under load: recsys-serve on a finished ml-1m-half run, driven by 1, 8 and 32 concurrent clients.

    python benchmarks/serve_load.py [--run artifacts/bench-serve] [--clients 1 8 32] [--requests 400]

Starts `recsys-serve` on the run (a free loopback port), waits for /health, then for each number
of clients and each endpoint (GET /recommend, POST /recommend/history, GET /movies) sends
`--requests` requests (at least 10 per client) from that many threads, each with its own
keep-alive connection, back to back: requests/s, p50/p90/p99 latency in ms, failed requests
(a non-2xx answer or a transport error). Users are drawn from the run's users, histories are 5
distinct catalogue movies, searches are 3-letter pieces of titles, all from one seed; users are the
run's test users (those its evaluation serves). Every load
is bounded in count and in time (`--max-seconds` per load), and every address is loopback.
Without `--run`, notebooks 01-06 run first on ml-1m-half into artifacts/bench-serve (about 10
minutes here) unless that run is already servable. Writes benchmarks/results/serve_load.json.
The clients share the machine's 2 cores with the service: the figures are the whole box's.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

import run_all  # noqa: E402
from recsys.core.io import write_json
from recsys.runs import machine
from recsys.runs.registry import ARTIFACTS
from recsys.service.background import serving
from recsys.service.served_run import RunNotServableError, check_servable


def default_data_dir() -> Path:
    shared = Path(os.environ.get("RECSYS_SHARED_DATA", ROOT.parent / "shared" / "data"))
    return shared / "ml-1m-half"


def ensure_run(run: Path | None) -> Path:
    """The run to serve: the one given, or artifacts/bench-serve made by notebooks 01-06 on ml-1m-half."""
    if run is not None:
        return run.resolve()
    run = ROOT / "artifacts" / "bench-serve"
    try:
        check_servable(run)
    except RunNotServableError:
        data_dir = default_data_dir()
        code = run_all.main(["--run-name", run.name, "-p", f"data_dir={data_dir}", "--until", "06"])
        if code != 0:
            sys.exit(f"run_all.py exited {code} while making {run}")
    return run


def request_makers(url: str, run: Path) -> dict:
    """endpoint -> a function (client, rng) -> response, with inputs drawn from the run's own ids and titles."""
    interactions = pd.read_parquet(run / Path(*ARTIFACTS["interactions"]), columns=["user_id", "movie_id", "split"])
    users = np.unique(interactions.loc[interactions["split"] == "test", "user_id"].to_numpy())  # the evaluated users
    movies = interactions["movie_id"].value_counts().index[:500].to_numpy()  # histories of watched movies
    titles = [m["title"] for m in httpx.get(f"{url}/movies", params={"query": "e", "limit": 50}).json()]
    pieces = [t[i : i + 3] for t in titles for i in range(0, max(len(t) - 3, 1), 4) if t[i : i + 3].strip()]
    return {
        "GET /recommend": lambda c, r: c.get("/recommend", params={"user_id": int(r.choice(users)), "k": 10}),
        "POST /recommend/history": lambda c, r: c.post(
            "/recommend/history", json={"movie_ids": [int(m) for m in r.choice(movies, 5, replace=False)], "k": 10}
        ),
        "GET /movies": lambda c, r: c.get("/movies", params={"query": str(r.choice(pieces)), "limit": 20}),
    }


def drive(url: str, make, clients: int, requests: int, max_seconds: float, seed: int) -> dict:
    """`requests` requests from `clients` threads back to back (or until max_seconds): throughput, latency, failures."""
    per_client = max(10, requests // clients)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures = [0] * clients
    deadline = time.monotonic() + max_seconds

    def client(index: int) -> None:
        rng = np.random.default_rng([seed, index])
        with httpx.Client(base_url=url, timeout=30) as session:
            for _ in range(per_client):
                if time.monotonic() > deadline:
                    return
                start = time.perf_counter()
                try:
                    ok = make(session, rng).status_code < 300
                except httpx.HTTPError:
                    ok = False
                latencies[index].append((time.perf_counter() - start) * 1e3)
                failures[index] += not ok

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    all_ms = np.concatenate([np.asarray(x) for x in latencies])
    p50, p90, p99 = np.percentile(all_ms, [50, 90, 99])
    return {
        "clients": clients,
        "requests": len(all_ms),
        "failed": int(sum(failures)),
        "requests_per_s": len(all_ms) / wall,
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a finished run (01-06); default: artifacts/bench-serve on ml-1m-half")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=400, help="requests per endpoint and number of clients")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="cap on one load's duration")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_load.json")
    args = parser.parse_args()

    run = ensure_run(args.run)
    load = os.getloadavg()[0]
    with serving(run) as url:
        makers = request_makers(url, run)
        for make in makers.values():  # warm-up: first calls trace the models' graphs
            with httpx.Client(base_url=url, timeout=60) as session:
                for i in range(20):
                    make(session, np.random.default_rng([args.seed, 10_000 + i]))
        rows = []
        for clients in args.clients:
            for name, make in makers.items():
                row = {"endpoint": name, **drive(url, make, clients, args.requests, args.max_seconds, args.seed)}
                rows.append(row)
                print(
                    f"{clients:>3} clients  {name:<24} {row['requests_per_s']:8.1f} req/s  p50 {row['p50_ms']:7.2f} ms  "
                    f"p99 {row['p99_ms']:7.2f} ms  failed {row['failed']}/{row['requests']}",
                    flush=True,
                )
    write_json(args.out, {"run": str(run), "load_average_at_start": load, **machine.describe(), "rows": rows})
    print(f"wrote {args.out}")
    return 0 if all(row["failed"] == 0 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
