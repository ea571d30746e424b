"""Exact search (TF BruteForce, FAISS Flat), ScaNN and FAISS (HNSW, IVF-PQ) on up to 10M candidates: queries/s, recall@10.

    python -m benchmarks.ann [--n 10000000] [--dim 64] [--dataset-kind overlap_skewed|separated]
        [--clusters N] [--n-queries 1000] [--seed 42] [--methods bruteforce faiss_flat scann faiss_ivfpq faiss_hnsw]
        [--reuse] [--hnsw-m 32] [--hnsw-ef-construction 40] [--cache-dir DIR] [--out ...json] [--figure ...png]

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
1.3 GB) and is cached too. Each method then runs in a process of its own, `python -m benchmarks.ann
--worker <method>`: 10M x 64 float32 is 2.56 GB and every method copies it (TF's constant, ScaNN's
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
- faiss_flat: `IndexFlatIP`, FAISS's exact search (BLAS sgemm over blocks of 4,096 queries x 1,024
  candidates, a k-heap per query, 2 OpenMP threads; 1 for single queries): exact like BruteForce,
  but it never materialises a block's full score matrix, so it takes the queries in blocks of any
  size; grid: queries per `search` call {32, 256, 1,024}. FAISS 1.15 only takes the BLAS route
  from 128,000 queries a call (`distance_compute_blas_threshold`) and otherwise scores one query at
  a time: 77 queries/s at 1M candidates against 375 through BLAS, the same lists, so the threshold
  is set to 20 (FAISS's before 1.8). The faster of the two exact methods in a run is the exact
  baseline (`exact_best_method`, `exact_best_qps`), which every method's `_speedup_exact` is
  measured against.
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
recall@10 >= 0.95, settings and tuning = ScaNN's); the exact baseline (exact_best_method,
exact_best_qps, scann_exact_target_met = ScaNN >= 10x the fastest exact search at measured
recall@10 >= 0.95 and ahead of the fastest FAISS index at that recall, faiss_best_method /
faiss_best_qps); plus dataset_kind, hardness, and per method
`<method>_qps`, `_recall_at_10`, `_build_s`, `_single_query_ms`, `_single_query_p95_ms`,
`_peak_rss_gb`, `_settings`, `_tuning` (every grid point, the chosen one flagged),
`_speedup_qps` (against BruteForce), `_speedup_exact` and the worker's other records; and a
figure, benchmarks/results/ann.png: recall@10 against batched queries/s of every grid point. Time
at 10M here: data and exact lists 2 minutes, BruteForce 5 to 8, FAISS Flat 14 (18 passes of 1,000
queries at 22 to 28 queries/s, 220 single queries at half a second), ScaNN 5, IVF-PQ 16 to 20, HNSW 13 to 28 (11 to 25
of them building) the first time. Run it alone:
another job on the two cores makes the timings meaningless; the load averages are recorded.

Layout: `settings` (what every part shares), `datasets` (the candidate sets, the cache, hardness),
`searchers/` (one index per module; TF, ScaNN and FAISS are imported only inside the functions
that build an index, so a FAISS worker never loads TensorFlow), `protocol` (tuning, choosing,
measuring), `worker` (one method in one process), `launch` (the parent's side of the workers),
`report` (ann.json, the figure, the table) and `__main__` (the command line).
"""
