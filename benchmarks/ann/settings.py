"""What every part of the ANN benchmark shares: the project root, k, the targets, the methods, the chunking."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"

K = 10
RECALL_TARGET = 0.95
# settings are chosen at this recall on the tuning queries: a margin for the sampling error of 1,000 queries
SELECTION_RECALL = 0.955
SPEEDUP_TARGET = 30.0
METHODS = ("bruteforce", "faiss_flat", "scann", "faiss_ivfpq", "faiss_hnsw")  # HNSW last: its build is the longest
EXACT_METHODS = ("bruteforce", "faiss_flat")  # exact by construction: the baselines the others are held to
EXACT_SPEEDUP_TARGET = 10.0  # ScaNN against the fastest exact search, at recall@10 >= RECALL_TARGET
QUERY_SETS = ("tuning", "measured")

BATCH_THREADS = 2  # batched searches, index builds and training
WRITE_CHUNK = 1_000_000  # rows generated and written to the cache, or added to an index, at a time
