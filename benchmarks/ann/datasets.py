"""The synthetic candidate sets: their generators, the .npy cache, and how hard each kind is to search."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.ann.settings import QUERY_SETS, WRITE_CHUNK, K
from recsys.core.io import atomic_path, write_json

DEFAULT_CLUSTERS = {"overlap_skewed": 20_000, "separated": 1000}
ZIPF_EXPONENT = 1.1
NORM_POPULARITY_SLOPE = 0.25  # log-norm per standard deviation of the cluster's log-popularity
NORM_NOISE_SD = 0.25  # per-vector log-norm noise
DRAW_CHUNK = 100_000  # rows drawn at a time: the separated set's random stream is the old one
HARDNESS_CANDIDATES = 1_000_000
HARDNESS_QUERIES = 200
HARDNESS_BLOCK = 50  # 50 x 1M scores = 200 MB


@dataclass(frozen=True)
class Mixture:
    """The generator of one candidate set (see the package docstring)."""

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
