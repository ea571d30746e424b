#!/usr/bin/env python
"""BruteForce (TF), ScaNN and FAISS (HNSW, IVF-PQ) on up to 10,000,000 candidates: queries/s, latency, recall@10.

    python benchmarks/ann.py [--n 10000000] [--dim 64] [--dataset-kind overlap_skewed|separated]
        [--clusters N] [--n-queries 1000] [--seed 42] [--methods bruteforce scann faiss_hnsw faiss_ivfpq]
        [--hnsw-m 32] [--hnsw-ef-construction 80] [--cache-dir DIR] [--out ...json] [--figure ...png]

Candidate sets (`--dataset-kind`), searched by inner product for the top k=10, as the retrieval
model's candidate index is:

- `separated`: the set this benchmark used before, kept so its 1M result can be reproduced
  (`--n 1000000 --dataset-kind separated` draws the very same vectors: same generator, same
  random stream). `--clusters` (1,000) centres N(0, I), points centre + N(0, I), every vector
  l2-normalised; queries are fresh draws from the same clusters. Cosines are about 0.5 inside a
  cluster and 0 across, so a query's top 10 all sit in its own cluster, inside one or two
  partitions of any index: ScaNN reached 132x exact search there, which flatters it.
- `overlap_skewed` (default), the harder set. Dimension i has scale i^-1/2 (an anisotropic
  spectrum: about 14 effective dimensions of 64, as learned embeddings have). `--clusters`
  (20,000) centres N(0, diag(i^-1)); cluster sizes follow Zipf's law with exponent 1.1 (the largest
  of 20,000 holds about 15 % of the vectors, the 100 largest about 60 %); a point is its centre
  plus noise of the centre's own scale, l2-normalised, then scaled by a log-normal norm tied to
  its cluster's popularity: exp(0.25 z + 0.25 N(0, 1)), z the cluster's standardised log-popularity
  (about 9x for the largest cluster, 3x for the 100th, 0.8x for the smallest). Queries are
  unit-norm mixtures w c_a + (1 - w) c_b of two popularity-drawn centres, w ~ U(0, 1) (a
  Dirichlet(1, 1) mix), plus the same noise.

Why `overlap_skewed` is harder, and closer to the retrieval index it stands for:

- Overlap: 20,000 centres in ~14 effective dimensions with noise at centre scale overlap, so a
  query's neighbours spread over many partitions and "nearest partition = answer" fails.
- Zipf sizes: the partitions (ScaNN's leaves, FAISS's inverted lists) come out unbalanced, and the
  k-means training sample is dominated by a few clusters.
- Skewed norms: the search is true maximum inner product search: long vectors from many clusters
  win lists they are not the closest to in angle (RetrievalConfig says it of the trained movie
  vectors: "popular movies grow long vectors and win every list"); score gaps shrink.
- Queries between two clusters, not at one, defeat partition-level shortcuts.

Hardness is measured, not only argued: for both kinds, on a fresh sample of min(n, 1M)
candidates and 200 queries of each kind's generator (exact search in numpy, seconds): relative
contrast at 10 (He, Kumar & Chang 2012: the mean distance over the 10th-neighbour distance, closer
to 1 is harder), taken on the standard MIPS -> nearest-neighbour reduction x' = [x, sqrt(M^2 -
|x|^2)], q' = [q, 0], where |q' - x'|^2 = 1 + M^2 - 2 q.x for unit queries (M the largest norm;
plain unit-vector distances for `separated`); the mean number of distinct generating clusters
among a query's true top 10; and the mean norm of the true top 10 over the mean norm.

Protocol. Data are written once into `--cache-dir` as .npy (candidates in 1M-row chunks, bounded
memory; 1,000 tuning and 1,000 measured queries) and reused. The exact top 10 of every query comes
from TF (matmul + tf.math.top_k, blocks of 128 queries, fewer at 10M so a block's scores stay near
1.3 GB) and is cached too. Each method then runs in a process of its own, this file re-invoked
with `--worker`: 10M x 64 float32 is 2.56 GB and every method copies it (TF's constant, ScaNN's
reordering copy, HNSW's 5 GB graph and vectors, IVF-PQ's refinement copy), so one process would
hold about 17 GB; and FAISS's OpenMP pool must not compete with TF's thread pools (FAISS workers
never import TensorFlow). Each worker records its peak RSS, the RSS its index added, and the load
average at its start. Per method:

1. build (timed; index settings below);
2. a grid of search-time settings on the tuning queries: recall@10 against the exact lists, and
   batched queries/s (2 threads) as the median of 3 passes after a warm-up pass whose lists give
   the recall;
3. the fastest setting with tuning recall@10 >= 0.955 is chosen (none reaching it: the most
   accurate one, and the worker says so). The 0.005 margin covers the sampling error of 1,000
   queries: without it, the first 10M run chose ScaNN's point at tuning recall 0.9514, which
   measured 0.9494 on the held-out queries;
4. on the measured queries (not the ones the setting was picked on): recall@10, batched queries/s
   (median of 5 passes after a warm-up), and single-query latency (median and p95 of 200 queries
   after 20 warm-ups, 1 thread: what a request-serving process sees).

Methods:

- bruteforce: TF matmul + `tf.math.top_k` over a `tf.constant` copy, exact by definition (its
  recall is still computed); "build" is the copy. Its single-query latency is timed in a worker
  of its own, because TF's thread counts (1 there, 2 for the batched figures) can only be set
  before TF initialises.
- scann: `scann_ops_pybind` (the C++ searcher; TFRS's ScaNN layer wraps it in TF ops and adds
  per-call overhead): a tree of round(2 sqrt(n)) leaves (2,000 at 1M, 6,325 at 10M) trained on
  min(n, 500k) points, asymmetric hashing with 2 dimensions per block (lut16) and anisotropic
  threshold 0.2 (ScaNN's advice for dot products), exact re-scoring of up to 20,000 candidates;
  grid: leaves searched = 0.5 % to 8 % of the leaves x candidates re-scored {250 ... 20,000}.
  `search_batched_parallel` (2 threads) batched, `search` for one query.
- faiss_hnsw: `IndexHNSWFlat` with inner product (ip-NSW, searched directly rather than through a
  MIPS -> L2 reduction), M=`--hnsw-m`, efConstruction=`--hnsw-ef-construction`, built with 2
  threads in 1M chunks (defaults M=32, efConstruction 40: FAISS's default; 80 took 134 s at 1M and
  would take about 50 minutes at 10M). At 10M the build took 25 minutes here, so the index is cached
  in the cache folder, keyed by M and efConstruction, with its original build time beside it
  (reported as build_s, with build_cached); grid: efSearch 16 ... 2048.
- faiss_ivfpq: `IVF{nlist}_HNSW32,PQ{dim}x4fs,RFlat`: 4-bit fast-scan codes, one per dimension
  (32 bytes a vector), nlist the power of two nearest 4 sqrt(n) (16,384 at 10M) and at most n/39;
  spherical k-means (FAISS's default for inner product), 12 iterations as ScaNN's tree, on
  max(39 nlist, 100k) sampled vectors (39 per list is FAISS's minimum); an HNSW32 graph over the
  centroids assigns vectors (efSearch 64) and queries to lists (a flat scan would cost 16,384 dot
  products per vector); RFlat re-scores k_factor x 10 candidates exactly. Grid: nprobe {32 ...
  4096} x k_factor {16, 64, 256, 1024}, set per call through SearchParameters (the coarse graph
  searched with efSearch max(64, 2 nprobe)). Tried at 1M on `overlap_skewed` and dropped: the
  16-byte layout of FAISS's own ScaNN comparison (benchs/bench_all_ivf/cmp_with_scann.py,
  `PQ{dim/2}x4fs`, two dimensions per 4-bit code) stopped at recall@10 0.58 (k_factor 64) and 0.88
  (k_factor 1,024) at nprobe 512 of 4,096 lists, against 0.82 and 0.93 with one dimension per code:
  coarse codes lose this set's small score gaps, which ScaNN's anisotropic loss is built to keep.
  HNSW searched on the MIPS -> L2 reduction (65 dimensions) was also tried at 1M: recall@10 0.79 at
  efSearch 1,024, against 0.88 for ip-NSW.

Writes benchmarks/results/ann.json: the keys this benchmark always had for its headline (ScaNN
against BruteForce: speedup_qps, target_met = ScaNN >= 30x BruteForce queries/s at measured
recall@10 >= 0.95, settings and tuning = ScaNN's), plus dataset_kind, hardness, and per method
`<method>_qps`, `_recall_at_10`, `_build_s`, `_single_query_ms`, `_single_query_p95_ms`,
`_peak_rss_gb`, `_settings`, `_tuning` (every grid point, the chosen one flagged),
`_speedup_qps` and the worker's other records; and a figure, benchmarks/results/ann.png: recall@10
against batched queries/s of every grid point. Time at 10M here: data and exact lists 2 minutes,
BruteForce 8, ScaNN 6, IVF-PQ 16, HNSW 28 (25 of them building) the first time. Run it alone:
another job on the two cores makes the timings meaningless; the load averages are recorded.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# recsys first: it sets TF_USE_LEGACY_KERAS and quiets TF's logs before any worker imports TF
from recsys.core.io import atomic_path, save_figure, write_json
from recsys.evaluation.full_ranking import overlap_at_k

K = 10
RECALL_TARGET = 0.95
# settings are chosen at this recall on the tuning queries: a margin for the sampling error of 1,000 queries
SELECTION_RECALL = 0.955
SPEEDUP_TARGET = 30.0
METHODS = ("bruteforce", "scann", "faiss_ivfpq", "faiss_hnsw")  # HNSW last: its build is the longest
LABELS = {"bruteforce": "BruteForce (TF)", "scann": "ScaNN", "faiss_hnsw": "FAISS HNSW", "faiss_ivfpq": "FAISS IVF-PQ"}
COLOURS = {"bruteforce": "black", "scann": "#4C72B0", "faiss_hnsw": "#DD8452", "faiss_ivfpq": "#55A868"}
# keys every method gets in ann.json (None when it did not run)
METHOD_KEYS = (
    "qps",
    "recall_at_10",
    "build_s",
    "single_query_ms",
    "single_query_p95_ms",
    "peak_rss_gb",
    "settings",
    "tuning",
)
QUERY_SETS = ("tuning", "measured")

# ---- data ------------------------------------------------------------------------------------
DEFAULT_CLUSTERS = {"overlap_skewed": 20_000, "separated": 1000}
ZIPF_EXPONENT = 1.1
NORM_POPULARITY_SLOPE = 0.25  # log-norm per standard deviation of the cluster's log-popularity
NORM_NOISE_SD = 0.25  # per-vector log-norm noise
DRAW_CHUNK = 100_000  # rows drawn at a time: the separated set's random stream is the old one
WRITE_CHUNK = 1_000_000  # rows generated and written to the cache at a time
HARDNESS_CANDIDATES = 1_000_000
HARDNESS_QUERIES = 200
HARDNESS_BLOCK = 50  # 50 x 1M scores = 200 MB

# ---- protocol --------------------------------------------------------------------------------
BATCH_THREADS = 2
TUNING_REPEATS = 3
MEASURE_REPEATS = 5
SINGLE_WARMUP = 20
SINGLE_QUERIES = 200
EXACT_MAX_BLOCK = 128
EXACT_SCORE_BYTES = 1.3e9  # a block's float32 scores (32 queries x 10M = 1.28 GB)

# ---- index settings --------------------------------------------------------------------------
SCANN_TRAINING_SAMPLE = 500_000
SCANN_DIMS_PER_BLOCK = 2
SCANN_ANISOTROPIC_THRESHOLD = 0.2
SCANN_LEAVES_FRACTIONS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.06, 0.08)
SCANN_REORDER_GRID = (250, 1000, 2500, 5000, 10000, 20000)
HNSW_EF_SEARCH_GRID = (16, 32, 64, 128, 256, 512, 1024, 2048)
IVF_POINTS_PER_LIST = 39  # FAISS's min_points_per_centroid: fewer training points draw its warning
IVF_MIN_TRAINING = 100_000
IVF_KMEANS_ITERATIONS = 12  # as ScaNN's tree
IVF_COARSE_HNSW_M = 32
IVF_COARSE_EF_SEARCH = 64
IVF_NPROBE_GRID = (32, 64, 128, 256, 512, 1024, 2048, 4096)
IVF_K_FACTOR_GRID = (16, 64, 256, 1024)


# ---- candidate sets --------------------------------------------------------------------------
@dataclass(frozen=True)
class Mixture:
    """The generator of one candidate set (see the module docstring)."""

    kind: str
    centres: np.ndarray  # (clusters, dim) float32
    scale: np.ndarray  # (dim,) scale of the noise around a centre
    popularity: np.ndarray | None  # cluster probabilities; None: uniform
    log_norm: np.ndarray | None  # mean log-norm of each cluster's vectors; None: unit vectors


def make_mixture(kind: str, rng: np.random.Generator, clusters: int, dim: int) -> Mixture:
    if kind == "separated":
        centres = rng.standard_normal((clusters, dim), dtype=np.float32)
        return Mixture(kind, centres, np.ones(dim, np.float32), None, None)
    scale = np.arange(1, dim + 1, dtype=np.float32) ** -0.5
    centres = rng.standard_normal((clusters, dim), dtype=np.float32) * scale
    popularity = np.arange(1, clusters + 1, dtype=np.float64) ** -ZIPF_EXPONENT
    popularity /= popularity.sum()
    log_popularity = np.log(popularity)
    z = (log_popularity - log_popularity.mean()) / log_popularity.std()
    return Mixture(kind, centres, scale, popularity, NORM_POPULARITY_SLOPE * z)


def pick_clusters(rng: np.random.Generator, mixture: Mixture, m: int) -> np.ndarray:
    if mixture.popularity is None:
        return rng.integers(0, len(mixture.centres), m)
    return rng.choice(len(mixture.centres), m, p=mixture.popularity)


def draw_candidates(rng: np.random.Generator, mixture: Mixture, m: int) -> tuple[np.ndarray, np.ndarray]:
    """m candidate vectors (float32) and the clusters they were drawn from."""
    vectors = np.empty((m, mixture.centres.shape[1]), np.float32)
    labels = np.empty(m, np.int64)
    for start in range(0, m, DRAW_CHUNK):
        stop = min(start + DRAW_CHUNK, m)
        labels[start:stop] = pick_clusters(rng, mixture, stop - start)
        points = mixture.centres[labels[start:stop]]
        points += rng.standard_normal(points.shape, dtype=np.float32) * mixture.scale
        points /= np.linalg.norm(points, axis=1, keepdims=True)
        if mixture.log_norm is not None:
            log_norm = mixture.log_norm[labels[start:stop]] + NORM_NOISE_SD * rng.standard_normal(stop - start)
            points *= np.exp(log_norm)[:, None]
        vectors[start:stop] = points
    return vectors, labels


def draw_queries(rng: np.random.Generator, mixture: Mixture, m: int) -> np.ndarray:
    """m unit-norm queries: fresh draws from the clusters (separated) or between two clusters (overlap_skewed)."""
    if mixture.kind == "separated":
        return draw_candidates(rng, mixture, m)[0]
    first, second = pick_clusters(rng, mixture, m), pick_clusters(rng, mixture, m)
    weight = rng.random((m, 1), dtype=np.float32)
    queries = weight * mixture.centres[first] + (1 - weight) * mixture.centres[second]
    queries += rng.standard_normal(queries.shape, dtype=np.float32) * mixture.scale
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def write_dataset(cache: Path, spec: dict) -> None:
    """Draw the candidates (WRITE_CHUNK rows at a time, straight into the .npy) and both query sets."""
    rng = np.random.default_rng(spec["seed"])
    mixture = make_mixture(spec["dataset_kind"], rng, spec["clusters"], spec["dim"])
    n = spec["n_candidates"]
    with atomic_path(cache / "candidates.npy", suffix=".npy") as tmp:
        candidates = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, spec["dim"]))
        for start in range(0, n, WRITE_CHUNK):
            stop = min(start + WRITE_CHUNK, n)
            candidates[start:stop] = draw_candidates(rng, mixture, stop - start)[0]
        candidates.flush()
    for name in QUERY_SETS:
        save_npy(cache / f"{name}_queries.npy", draw_queries(rng, mixture, spec["n_queries"]))


def ensure_dataset(cache: Path, spec: dict) -> float | None:
    """Write the data set into `cache` unless it is there; the seconds it took (None: cached).

    Raises:
        SystemExit: `cache` holds another data set.
    """
    record = cache / "dataset.json"
    if record.exists():
        found = json.loads(record.read_text())
        if found != spec:
            raise SystemExit(f"{cache} holds another data set ({found}): pick another --cache-dir or delete it")
        return None
    cache.mkdir(parents=True, exist_ok=True)
    for pattern in ("truth_*.npy", "exact.json", "faiss_hnsw_M*"):  # derived from an older draw
        for stale in cache.glob(pattern):
            stale.unlink()
    start = time.perf_counter()
    write_dataset(cache, spec)
    write_json(record, spec)  # last: marks the data set complete
    return time.perf_counter() - start


def hardness(kind: str, clusters: int, dim: int, seed: int, n: int) -> dict:
    """Relative contrast at 10, distinct clusters and norms of the true top 10, on a fresh sample of `kind`."""
    rng = np.random.default_rng([seed, 1])  # a stream of its own: the cached data are not touched
    mixture = make_mixture(kind, rng, clusters, dim)
    candidates, labels = draw_candidates(rng, mixture, n)
    queries = draw_queries(rng, mixture, HARDNESS_QUERIES)
    norms = np.linalg.norm(candidates, axis=1)
    offset = 1.0 + float(norms.max()) ** 2  # |q'|^2 + |x'|^2 in the MIPS -> nearest-neighbour reduction
    contrast, distinct, top_norms = [], [], []
    for start in range(0, len(queries), HARDNESS_BLOCK):
        scores = queries[start : start + HARDNESS_BLOCK] @ candidates.T
        top = np.argpartition(scores, -K, axis=1)[:, -K:]
        tenth = np.take_along_axis(scores, top, axis=1).min(axis=1)
        mean_distance = np.sqrt(np.maximum(offset - 2 * scores, 0)).mean(axis=1)
        contrast.append(mean_distance / np.sqrt(np.maximum(offset - 2 * tenth, 1e-12)))
        distinct += [len(np.unique(labels[row])) for row in top]
        top_norms.append(norms[top].mean(axis=1))
    return {
        "clusters": clusters,
        "relative_contrast_at_10": float(np.mean(np.concatenate(contrast))),
        "top10_distinct_clusters": float(np.mean(distinct)),
        "top10_norm_over_mean_norm": float(np.mean(np.concatenate(top_norms)) / norms.mean()),
    }


# ---- searchers (in the workers) --------------------------------------------------------------
@dataclass
class Searcher:
    """A built index: its search-time grid, how to search at a setting, what the build cost."""

    grid: list[dict]
    at: Callable[[dict], Callable[[np.ndarray], np.ndarray]]  # setting -> batched search returning ids
    one_at: Callable[[dict], Callable[[np.ndarray], object]]  # setting -> search of one query
    settings: dict  # build-time settings and route
    info: dict  # build_s, index_rss_delta_gb, ...
    single_thread: Callable[[], None] = lambda: None  # switch to one thread before timing single queries


def rss_gb() -> float:
    return psutil.Process().memory_info().rss / 1e9


def load_candidates(cache: Path) -> np.ndarray:
    return np.load(cache / "candidates.npy")


def exact_block(n: int) -> int:
    """Queries per exact-search block: a power of two up to 128 whose float32 scores fit EXACT_SCORE_BYTES."""
    block = EXACT_MAX_BLOCK
    while block > 1 and block * n * 4 > EXACT_SCORE_BYTES:
        block //= 2
    return block


def tf_searcher(cache: Path, threads: int | None) -> Searcher:
    """Exact search: TF matmul + top_k over a tf.constant copy; `threads` None keeps TF's default pools."""
    import tensorflow as tf

    if threads:  # only possible before TF initialises, hence single-query timing in a worker of its own
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    candidates = load_candidates(cache)
    before = rss_gb()
    start = time.perf_counter()
    database = tf.constant(candidates)
    build_s = time.perf_counter() - start
    block = exact_block(len(candidates))

    @tf.function(input_signature=[tf.TensorSpec([None, candidates.shape[1]], tf.float32)])
    def top_k(queries):
        return tf.math.top_k(tf.linalg.matmul(queries, database, transpose_b=True), k=K)[1]

    def at(setting: dict) -> Callable[[np.ndarray], np.ndarray]:
        step = setting["query_block"]
        return lambda q: np.concatenate([top_k(tf.constant(q[i : i + step])).numpy() for i in range(0, len(q), step)])

    return Searcher(
        grid=[{"query_block": block}],
        at=at,
        one_at=lambda _setting: lambda q: top_k(tf.constant(q[None])).numpy(),
        settings={"route": f"TF matmul + tf.math.top_k, blocks of {block} queries", "tf_threads": threads},
        info={"build_s": build_s, "index_rss_delta_gb": rss_gb() - before},
    )


def scann_leaves_grid(num_leaves: int) -> list[int]:
    return sorted({min(num_leaves, max(1, round(f * num_leaves))) for f in SCANN_LEAVES_FRACTIONS})


def scann_searcher(cache: Path, args: argparse.Namespace) -> Searcher:
    import scann  # its package also imports TF (recsys came first)

    candidates = load_candidates(cache)
    n = len(candidates)
    num_leaves = round(2 * math.sqrt(n))
    reorders = sorted({min(r, n) for r in SCANN_REORDER_GRID})
    grid = [{"leaves_to_search": leaves, "reorder": r} for leaves in scann_leaves_grid(num_leaves) for r in reorders]
    settings = {
        "num_leaves": num_leaves,
        "training_sample_size": min(n, SCANN_TRAINING_SAMPLE),
        "quantisation": f"asymmetric hashing, {SCANN_DIMS_PER_BLOCK} dims per block, lut16",
        "anisotropic_quantization_threshold": SCANN_ANISOTROPIC_THRESHOLD,
        "reordering_num_neighbors_built": reorders[-1],
        "distance": "dot_product",
        "training_threads": BATCH_THREADS,
        "route": "scann.scann_ops_pybind: search_batched_parallel (batched, 2 threads), search (one query)",
    }
    before = rss_gb()
    start = time.perf_counter()
    searcher = (
        scann.scann_ops_pybind.builder(candidates, K, "dot_product")
        .tree(
            num_leaves=num_leaves,
            num_leaves_to_search=grid[0]["leaves_to_search"],
            training_sample_size=settings["training_sample_size"],
        )
        .score_ah(SCANN_DIMS_PER_BLOCK, anisotropic_quantization_threshold=SCANN_ANISOTROPIC_THRESHOLD)
        .reorder(reorders[-1])
        .set_n_training_threads(BATCH_THREADS)
        .build()
    )
    info = {"build_s": time.perf_counter() - start, "index_rss_delta_gb": rss_gb() - before}
    searcher.set_num_threads(BATCH_THREADS)

    def at(s: dict) -> Callable[[np.ndarray], np.ndarray]:
        return lambda q: searcher.search_batched_parallel(
            q, final_num_neighbors=K, pre_reorder_num_neighbors=s["reorder"], leaves_to_search=s["leaves_to_search"]
        )[0]

    def one_at(s: dict) -> Callable[[np.ndarray], object]:
        return lambda q: searcher.search(
            q, final_num_neighbors=K, pre_reorder_num_neighbors=s["reorder"], leaves_to_search=s["leaves_to_search"]
        )

    return Searcher(grid, at, one_at, settings, info)


def faiss_searcher(index, grid: list[dict], params_for: Callable, settings: dict, info: dict) -> Searcher:
    """A FAISS index searched with per-call SearchParameters: 2 OpenMP threads batched, 1 for single queries."""
    import faiss

    def at(setting: dict) -> Callable[[np.ndarray], np.ndarray]:
        params = params_for(setting)
        return lambda q: index.search(q, K, params=params)[1]

    def one_at(setting: dict) -> Callable[[np.ndarray], object]:
        search = at(setting)
        return lambda q: search(q[None])

    return Searcher(grid, at, one_at, settings, info, single_thread=lambda: faiss.omp_set_num_threads(1))


def add_in_chunks(index, candidates: np.ndarray, name: str) -> None:
    start = time.perf_counter()
    for first in range(0, len(candidates), WRITE_CHUNK):
        last = min(first + WRITE_CHUNK, len(candidates))
        index.add(candidates[first:last])
        print(f"  {name}: {last:,}/{len(candidates):,} added ({time.perf_counter() - start:.0f} s)", flush=True)


def hnsw_path(cache: Path, m: int, ef_construction: int) -> Path:
    return cache / f"faiss_hnsw_M{m}_efC{ef_construction}.index"


def build_hnsw(cache: Path, m: int, ef_construction: int):
    """Build the HNSW index and cache it with its build time; (index, build record)."""
    import faiss

    candidates = load_candidates(cache)
    before = rss_gb()
    start = time.perf_counter()
    index = faiss.IndexHNSWFlat(candidates.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    add_in_chunks(index, candidates, "HNSW")
    record = {"build_s": time.perf_counter() - start, "index_rss_delta_gb": rss_gb() - before}
    path = hnsw_path(cache, m, ef_construction)
    with atomic_path(path, suffix=".index") as tmp:
        faiss.write_index(index, str(tmp))
    write_json(path.with_suffix(".json"), {**record, "n": len(candidates), "faiss_version": faiss.__version__})
    return index, record


def faiss_hnsw_searcher(cache: Path, args: argparse.Namespace) -> Searcher:
    import faiss

    faiss.omp_set_num_threads(BATCH_THREADS)
    path = hnsw_path(cache, args.hnsw_m, args.hnsw_ef_construction)
    cached = path.exists() and path.with_suffix(".json").exists()
    if cached:  # the original build time, and what loading the index adds to the RSS
        before = rss_gb()
        start = time.perf_counter()
        index = faiss.read_index(str(path))
        load_s = time.perf_counter() - start
        build_s = json.loads(path.with_suffix(".json").read_text())["build_s"]
        info = {"build_s": build_s, "index_load_s": load_s, "index_rss_delta_gb": rss_gb() - before}
    else:
        index, info = build_hnsw(cache, args.hnsw_m, args.hnsw_ef_construction)
    info |= {"build_cached": cached, "index_file_gb": path.stat().st_size / 1e9}
    settings = {
        "index": "IndexHNSWFlat, METRIC_INNER_PRODUCT",
        "M": args.hnsw_m,
        "ef_construction": args.hnsw_ef_construction,
        "build_threads": BATCH_THREADS,
        "route": "faiss index.search, SearchParametersHNSW (batched: 2 OpenMP threads, one query: 1)",
    }
    grid = [{"ef_search": ef} for ef in HNSW_EF_SEARCH_GRID]
    return faiss_searcher(index, grid, lambda s: faiss.SearchParametersHNSW(efSearch=s["ef_search"]), settings, info)


def ivf_lists(n: int) -> int:
    """The power of two nearest 4 sqrt(n), halved until every list has IVF_POINTS_PER_LIST training points."""
    nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
    while nlist > 1 and nlist * IVF_POINTS_PER_LIST > n:
        nlist //= 2
    return nlist


def ivfpq_params(setting: dict):
    import faiss

    nprobe = setting["nprobe"]
    coarse = faiss.SearchParametersHNSW(efSearch=max(IVF_COARSE_EF_SEARCH, 2 * nprobe))
    lists = faiss.SearchParametersIVF(nprobe=nprobe, quantizer_params=coarse)
    return faiss.IndexRefineSearchParameters(k_factor=float(setting["k_factor"]), base_index_params=lists)


def faiss_ivfpq_searcher(cache: Path, args: argparse.Namespace) -> Searcher:
    import faiss

    faiss.omp_set_num_threads(BATCH_THREADS)
    candidates = load_candidates(cache)
    n, dim = candidates.shape
    nlist = ivf_lists(n)
    factory = f"IVF{nlist}_HNSW{IVF_COARSE_HNSW_M},PQ{dim}x4fs,RFlat"
    training_size = min(n, max(IVF_POINTS_PER_LIST * nlist, IVF_MIN_TRAINING))
    before = rss_gb()
    start = time.perf_counter()
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    lists = faiss.extract_index_ivf(index)
    lists.cp.niter = IVF_KMEANS_ITERATIONS
    sample = np.random.default_rng(args.seed).choice(n, training_size, replace=False)
    index.train(candidates[np.sort(sample)])
    faiss.downcast_index(lists.quantizer).hnsw.efSearch = IVF_COARSE_EF_SEARCH  # for assigning the candidates
    add_in_chunks(index, candidates, "IVF-PQ")
    info = {"build_s": time.perf_counter() - start, "index_rss_delta_gb": rss_gb() - before}
    settings = {
        "factory": factory,
        "metric": "inner_product",
        "nlist": nlist,
        "training_sample_size": training_size,
        "kmeans_iterations": IVF_KMEANS_ITERATIONS,
        "coarse_ef_search": f"max({IVF_COARSE_EF_SEARCH}, 2 nprobe)",
        "route": "faiss index.search, IndexRefineSearchParameters(SearchParametersIVF) "
        "(batched: 2 OpenMP threads, one query: 1)",
    }
    nprobes = sorted({min(p, nlist) for p in IVF_NPROBE_GRID})
    grid = [{"nprobe": p, "k_factor": f} for p in nprobes for f in IVF_K_FACTOR_GRID]
    return faiss_searcher(index, grid, ivfpq_params, settings, info)


SEARCHERS: dict[str, Callable[[Path, argparse.Namespace], Searcher]] = {
    "bruteforce": lambda cache, _args: tf_searcher(cache, BATCH_THREADS),
    "bruteforce_single": lambda cache, _args: tf_searcher(cache, 1),
    "scann": scann_searcher,
    "faiss_hnsw": faiss_hnsw_searcher,
    "faiss_ivfpq": faiss_ivfpq_searcher,
}


# ---- protocol (in the workers) ---------------------------------------------------------------
def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def batched(
    search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray, truth: np.ndarray, repeats: int
) -> tuple[float, float]:
    """(recall@10, queries/s): a warm-up pass gives the lists, then the median of `repeats` timed passes."""
    ids = np.asarray(search(queries), np.int64)
    seconds = median_time(lambda: search(queries), repeats)
    return overlap_at_k(ids, truth, K), len(queries) / seconds


def tune(searcher: Searcher, queries: np.ndarray, truth: np.ndarray) -> list[dict]:
    points = []
    for setting in searcher.grid:
        recall, qps = batched(searcher.at(setting), queries, truth, TUNING_REPEATS)
        points.append({**setting, "recall_at_10": recall, "qps": qps})
        described = ", ".join(f"{key}={value}" for key, value in setting.items())
        print(f"  {described}: recall@10 {recall:.4f}, {qps:,.0f} queries/s", flush=True)
    return points


def choose(points: list[dict]) -> tuple[dict, bool]:
    """The fastest point at recall@10 >= SELECTION_RECALL, else the most accurate; and whether one reached it."""
    meeting = [p for p in points if p["recall_at_10"] >= SELECTION_RECALL]
    chosen = max(meeting, key=lambda p: p["qps"]) if meeting else max(points, key=lambda p: p["recall_at_10"])
    for point in points:
        point["chosen"] = point is chosen
    return chosen, bool(meeting)


def single_query_latency(search_one: Callable[[np.ndarray], object], queries: np.ndarray) -> dict:
    for q in queries[:SINGLE_WARMUP]:
        search_one(q)
    times = []
    for q in queries[SINGLE_WARMUP : SINGLE_WARMUP + SINGLE_QUERIES]:
        start = time.perf_counter()
        search_one(q)
        times.append(time.perf_counter() - start)
    return {
        "single_query_ms": float(np.median(times) * 1e3),
        "single_query_p95_ms": float(np.percentile(times, 95) * 1e3),
        "single_queries_timed": len(times),
    }


def benchmark(name: str, cache: Path, args: argparse.Namespace) -> dict:
    """Build one method's index, tune it on the tuning queries, measure it on the measured ones."""
    queries = {s: np.load(cache / f"{s}_queries.npy") for s in QUERY_SETS}
    truth = {s: np.load(cache / f"truth_{s}.npy") for s in QUERY_SETS}
    searcher = SEARCHERS[name](cache, args)
    cached = " (cached index: its original build)" if searcher.info.get("build_cached") else ""
    print(f"{name}: build {searcher.info['build_s']:.1f} s{cached}", flush=True)
    if name == "bruteforce_single":
        return single_query_latency(searcher.one_at(searcher.grid[0]), queries["measured"])
    points = tune(searcher, queries["tuning"], truth["tuning"])
    chosen, met = choose(points)
    if not met:
        print(
            f"{name}: no setting reached recall@10 {SELECTION_RECALL} on the tuning queries: the most accurate is used"
        )
    setting = {key: chosen[key] for key in searcher.grid[0]}
    recall, qps = batched(searcher.at(setting), queries["measured"], truth["measured"], MEASURE_REPEATS)
    result = {**searcher.info, "settings": {**searcher.settings, **setting}, "tuning": points}
    result |= {"tuning_target_met": met, "recall_at_10": recall, "qps": qps}
    if name != "bruteforce":  # its single queries need TF started on one thread: worker bruteforce_single
        searcher.single_thread()
        result |= single_query_latency(searcher.one_at(setting), queries["measured"])
    return result


def ground_truth(cache: Path) -> dict:
    """The exact top 10 of every tuning and measured query, by TF (its default thread pools), into the cache."""
    searcher = tf_searcher(cache, None)
    search = searcher.at(searcher.grid[0])
    start = time.perf_counter()
    for name in QUERY_SETS:
        save_npy(cache / f"truth_{name}.npy", search(np.load(cache / f"{name}_queries.npy")).astype(np.int64))
    return {"route": searcher.settings["route"], "search_s": time.perf_counter() - start}


def run_worker(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    load = os.getloadavg()[0]
    if args.worker == "exact":
        result = ground_truth(args.cache_dir)
    else:
        result = benchmark(args.worker, args.cache_dir, args)
    result |= {
        "load_average_at_start": load,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,  # Linux: KiB
        "worker_wall_s": time.perf_counter() - started,
    }
    write_json(args.cache_dir / f"{args.worker}.json", result)
    return 0


# ---- parent ----------------------------------------------------------------------------------
def launch(name: str, args: argparse.Namespace) -> dict | None:
    """Run worker `name` in a fresh process; its JSON record, or None if it failed."""
    out = args.cache_dir / f"{name}.json"
    out.unlink(missing_ok=True)
    command = [sys.executable, "-u", str(Path(__file__).resolve()), "--worker", name]
    command += ["--cache-dir", str(args.cache_dir), "--seed", str(args.seed), "--hnsw-m", str(args.hnsw_m)]
    command += ["--hnsw-ef-construction", str(args.hnsw_ef_construction)]
    print(f"=== {name}", flush=True)
    code = subprocess.call(command, cwd=ROOT)
    if code != 0:
        print(f"worker {name} exited {code}", flush=True)
        return None
    return json.loads(out.read_text())


def run_methods(args: argparse.Namespace) -> tuple[dict[str, dict], list[str]]:
    """Each requested method's worker record (bruteforce's with its single-query figures), and the failed workers."""
    runs, failed = {}, []
    for method in METHODS:
        if method not in args.methods:
            if args.reuse and (args.cache_dir / f"{method}.json").exists():
                runs[method] = reused(method, args.cache_dir)
            continue
        run = launch(method, args)
        if run is None:
            failed.append(method)
            continue
        if method == "bruteforce":
            single = launch("bruteforce_single", args)
            if single is None:
                failed.append("bruteforce_single")
            else:
                run |= {key: value for key, value in single.items() if key.startswith("single_")}
        runs[method] = run
    return runs, failed


def reused(method: str, cache: Path) -> dict:
    """A method's record from an earlier run on the same cached data (`--reuse`)."""
    run = json.loads((cache / f"{method}.json").read_text())
    if method == "bruteforce" and (cache / "bruteforce_single.json").exists():
        single = json.loads((cache / "bruteforce_single.json").read_text())
        run |= {key: value for key, value in single.items() if key.startswith("single_")}
    print(f"=== {method}: reused from {cache / (method + '.json')}", flush=True)
    return {**run, "reused_from_earlier_run": True}


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def merge(args: argparse.Namespace, runs: dict[str, dict], context: dict) -> dict:
    """ann.json: the old headline keys (ScaNN against BruteForce) and every method's `<method>_<key>`."""
    result = {
        "n_candidates": args.n,
        "dim": args.dim,
        "clusters": args.clusters,
        "n_queries": args.n_queries,
        "seed": args.seed,
        "k": K,
        "dataset_kind": args.dataset_kind,
        "cpu_count": os.cpu_count(),
        "recall_target": RECALL_TARGET,
        "selection_recall_on_tuning_queries": SELECTION_RECALL,
        "speedup_target": SPEEDUP_TARGET,
        "tf_version": package_version("tensorflow"),
        "scann_version": package_version("scann"),
        "faiss_version": package_version("faiss-cpu"),
        **context,
    }
    bruteforce_qps = runs.get("bruteforce", {}).get("qps")
    for method in METHODS:
        run = runs.get(method, {})
        result |= {f"{method}_{key}": run.get(key) for key in METHOD_KEYS}
        result |= {f"{method}_{key}": value for key, value in run.items()}
        speedup = run["qps"] / bruteforce_qps if run and bruteforce_qps else None
        result[f"{method}_speedup_qps"] = speedup
    scann = runs.get("scann", {})
    result |= {
        "bruteforce_route": (result["bruteforce_settings"] or {}).get("route"),
        "bruteforce_single_query_latency_ms": result["bruteforce_single_query_ms"],
        "scann_single_query_latency_ms": result["scann_single_query_ms"],
        "speedup_qps": result["scann_speedup_qps"],
        "target_met": bool(
            result["scann_speedup_qps"]
            and result["scann_speedup_qps"] >= SPEEDUP_TARGET
            and scann["recall_at_10"] >= RECALL_TARGET
        ),
        "settings": scann.get("settings"),
        "tuning": scann.get("tuning"),
    }
    return result


def pareto_front(points: list[dict]) -> list[dict]:
    """The points no other point beats on both recall and queries/s, by increasing recall."""
    front, best_qps = [], 0.0
    for point in sorted(points, key=lambda p: (-p["recall_at_10"], -p["qps"])):
        if point["qps"] > best_qps:
            front.append(point)
            best_qps = point["qps"]
    return front[::-1]


def plot(result: dict, runs: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    for method, run in runs.items():
        points, colour = run["tuning"], COLOURS[method]
        ax.scatter([p["recall_at_10"] for p in points], [p["qps"] for p in points], s=16, alpha=0.5, color=colour)
        front = pareto_front(points)
        ax.plot([p["recall_at_10"] for p in front], [p["qps"] for p in front], color=colour, label=LABELS[method])
        chosen = next(p for p in points if p["chosen"])
        ax.scatter(chosen["recall_at_10"], chosen["qps"], s=140, marker="*", color=colour, edgecolor="black", zorder=3)
    ax.axvline(RECALL_TARGET, color="#C44E52", ls="--", lw=1, label=f"recall@10 = {RECALL_TARGET}")
    ax.set(
        yscale="log",
        xlabel="recall@10 (tuning queries)",
        ylabel=f"queries/s (batched, {BATCH_THREADS} threads)",
        title=f"{result['n_candidates']:,} x {result['dim']}-d candidates, {result['dataset_kind']}: "
        "every grid setting (star: chosen)",
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    save_figure(fig, path)
    plt.close(fig)


def print_table(result: dict, methods: list[str]) -> None:
    def cell(value, spec: str, width: int) -> str:
        return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"

    print(
        f"\n{'':<16}{'build s':>10}{'queries/s':>12}{'x BF':>8}{'single ms':>11}{'p95 ms':>9}"
        f"{'recall@10':>11}{'peak GB':>9}"
    )
    for m in methods:
        print(
            f"{LABELS[m]:<16}{cell(result[f'{m}_build_s'], '.1f', 10)}{cell(result[f'{m}_qps'], ',.0f', 12)}"
            f"{cell(result[f'{m}_speedup_qps'], '.1f', 8)}{cell(result[f'{m}_single_query_ms'], '.3f', 11)}"
            f"{cell(result[f'{m}_single_query_p95_ms'], '.3f', 9)}{cell(result[f'{m}_recall_at_10'], '.4f', 11)}"
            f"{cell(result[f'{m}_peak_rss_gb'], '.2f', 9)}"
        )
    if result["speedup_qps"] is not None:
        print(
            f"ScaNN / BruteForce queries/s: {result['speedup_qps']:.1f}x (target >= {SPEEDUP_TARGET:.0f}x at recall@10 "
            f">= {RECALL_TARGET}): {'met' if result['target_met'] else 'NOT met'}"
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ann.json")
    parser.add_argument("--figure", type=Path, default=ROOT / "benchmarks" / "results" / "ann.png")
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
