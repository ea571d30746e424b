"""FAISS indexes behind the TFRS indexes' interface (recsys.retrieval.faiss_indexes) and the choice of served index."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import faiss
import numpy as np
import pytest
import tensorflow as tf

from recsys.core.ids import NO_MOVIE
from recsys.features.encoding import FeatureEncoder
from recsys.models import retrieval_model
from recsys.models.configs import RetrievalConfig
from recsys.retrieval import faiss_indexes, indexes
from recsys.retrieval.index_comparison import INDEX_KINDS, build_index_pair
from recsys.retrieval.retrievers import IndexRetriever
from recsys.runs.params import load_params
from tests.conftest import PROJECT_ROOT
from tests.online_fixtures import tiny_tables

N_MOVIES, DIM, K = 200, 16, 10
SCANN = {"k": K, "num_leaves": 4, "num_leaves_to_search": 4, "num_reordering_candidates": N_MOVIES}
# generous: HNSW explores the whole catalogue, IVF probes every list, ScaNN re-scores every movie exactly
GENEROUS = {"hnsw_m": 16, "hnsw_ef_construction": 200, "hnsw_ef_search": N_MOVIES, "ivf_nlist": 8, "ivf_nprobe": 8}
TIGHT = {**GENEROUS, "hnsw_ef_search": 4, "ivf_nprobe": 1}


@pytest.fixture(scope="module")
def catalogue():
    rng = np.random.default_rng(11)
    movie_ids = (np.arange(N_MOVIES) + 1) * 10
    movie_vectors = rng.normal(size=(N_MOVIES, DIM)).astype(np.float32)
    queries = rng.normal(size=(40, DIM)).astype(np.float32)
    return movie_ids, movie_vectors, queries


def exact_top_k(queries, movie_vectors, movie_ids, k):
    return movie_ids[np.argsort(-(queries @ movie_vectors.T), axis=1, kind="stable")[:, :k]]


def build(kind, catalogue, faiss_params=GENEROUS, seed=3, query_model=None):
    movie_ids, movie_vectors, _ = catalogue
    return build_index_pair(query_model, movie_ids, movie_vectors, SCANN, seed, kind=kind, faiss=faiss_params)


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_every_kind_returns_the_exact_top_k_at_generous_settings(catalogue, kind):
    movie_ids, movie_vectors, queries = catalogue
    pair = build(kind, catalogue)
    scores, ids = pair.served(tf.constant(queries), k=K)
    np.testing.assert_array_equal(ids.numpy(), exact_top_k(queries, movie_vectors, movie_ids, K))
    assert (np.diff(scores.numpy(), axis=1) <= 1e-6).all()  # best first
    assert pair.kind == kind and pair.k == K and set(pair.build_s) == {"bruteforce", kind}
    assert (pair.served is pair.bruteforce) == (kind == "bruteforce")


@pytest.mark.parametrize("kind", faiss_indexes.FAISS_KINDS)
def test_a_faiss_index_is_called_like_a_tfrs_one(catalogue, kind):
    movie_ids, _, queries = catalogue
    index = build(kind, catalogue).served
    assert isinstance(index, faiss_indexes.FaissIndex) and indexes.index_kind(index) == kind
    assert index.n_candidates == N_MOVIES and index.query_dim == DIM and index.k == K
    scores, ids = index(queries[:3])  # numpy queries, the default k
    assert ids.shape == scores.shape == (3, K) and ids.dtype == tf.int64 and scores.dtype == tf.float32
    assert np.isin(ids.numpy(), movie_ids).all()
    with pytest.raises(ValueError, match="query vectors of shape"):
        index(tf.constant([1, 2], tf.int32))
    with pytest.raises(ValueError, match="k must be at least 1"):
        index(queries[:1], k=0)
    timing = indexes.time_queries(index, queries, batch=8, n_single=3, warmup=1)
    assert timing["batch_queries_per_s"] > 0 and timing["single_query_latency_ms"] > 0


def test_faiss_padding_becomes_no_movie_with_nan_and_the_retriever_drops_it(catalogue):
    movie_ids, movie_vectors, queries = catalogue
    pair = build("faiss_ivf", catalogue, TIGHT)  # one list of 8 probed: about 25 movies per query
    scores, ids = pair.served(queries, k=N_MOVIES)
    scores, ids = scores.numpy(), ids.numpy()
    padded = ids == NO_MOVIE
    assert padded.any(axis=1).all() and np.isnan(scores[padded]).all() and np.isfinite(scores[~padded]).all()
    assert not (padded[:, :-1] & ~padded[:, 1:]).any()  # padding only after the real movies
    # through the retriever, with each query's 5 best movies excluded: never an excluded movie, padding dropped
    user_ids = np.arange(len(queries))
    lookup = dict(zip(user_ids, queries))
    excludes = list(exact_top_k(queries, movie_vectors, movie_ids, 5))
    wanted = 40  # more than the probed list holds for most queries
    short = IndexRetriever(pair.served, lookup, batch_size=7).query(user_ids, wanted, excludes)
    assert short.n_fallback == 0
    filled = short.movie_ids != NO_MOVIE
    assert (~filled).any() and np.isneginf(short.scores[~filled]).all()
    assert not any(np.isin(row, ex).any() for row, ex in zip(short.movie_ids, excludes))
    refilled = IndexRetriever(pair.served, lookup, fallback=pair.bruteforce).query(user_ids, wanted, excludes)
    assert refilled.n_fallback == int((~filled).any(axis=1).sum()) and (refilled.movie_ids != NO_MOVIE).all()
    is_short = (~filled).any(axis=1)
    np.testing.assert_array_equal(refilled.movie_ids[~is_short], short.movie_ids[~is_short])
    expected = exact_top_k(queries, movie_vectors, movie_ids, 5 + wanted)[:, 5:]  # the 5 best are excluded
    np.testing.assert_array_equal(refilled.movie_ids[is_short], expected[is_short])


@pytest.mark.parametrize("kind", faiss_indexes.FAISS_KINDS)
def test_a_list_does_not_depend_on_how_long_a_list_was_asked_for(catalogue, kind):
    """The retriever asks a batch for n + its users' most seen movies: a user's first k must not depend on that."""
    _, _, queries = catalogue
    index = build(kind, catalogue, TIGHT).served  # ef_search 4, one IVF list probed
    lists = {k: index(queries, k=k)[1].numpy() for k in (5, 20, N_MOVIES)}
    np.testing.assert_array_equal(lists[20][:, :5], lists[5])
    np.testing.assert_array_equal(lists[N_MOVIES][:, :20], lists[20])
    assert (lists[N_MOVIES] == NO_MOVIE).any()  # more than the walk (or the probed list) scored: padded
    if kind == "faiss_hnsw":  # one walk of ef_search, whatever k (FAISS would widen it to k): the rest padded
        assert ((lists[N_MOVIES] != NO_MOVIE).sum(axis=1) <= TIGHT["hnsw_ef_search"]).all()


@pytest.mark.parametrize("kind", faiss_indexes.FAISS_KINDS)
def test_the_same_seed_builds_the_same_index(catalogue, kind):
    _, _, queries = catalogue
    first, again, other = (build(kind, catalogue, TIGHT, seed=seed).served for seed in (5, 5, 6))
    np.testing.assert_array_equal(first(queries, k=K)[1].numpy(), again(queries, k=K)[1].numpy())
    if kind == "faiss_hnsw":  # the seed draws the levels of the graph
        built = [faiss.vector_to_array(index.index.hnsw.levels) for index in (first, again, other)]
    else:  # the seed starts k-means: the list centres
        built = [index.index.quantizer.reconstruct_n(0, TIGHT["ivf_nlist"]) for index in (first, again, other)]
    np.testing.assert_array_equal(built[0], built[1])
    assert not np.array_equal(built[0], built[2])


@pytest.mark.parametrize("kind", faiss_indexes.FAISS_KINDS)
def test_a_saved_faiss_index_reloads_the_same_also_in_a_fresh_process(catalogue, kind, tmp_path):
    _, _, queries = catalogue
    pair = build(kind, catalogue, TIGHT)
    live_scores, live_ids = (t.numpy() for t in pair.served(queries, k=50))
    assert pair.save(tmp_path / "bruteforce", tmp_path / "served", queries)  # saved twice: the second replaces
    path = indexes.save_index(pair.served, tmp_path / "served")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bruteforce", "served"]  # nothing temporary left
    assert (path / faiss_indexes.META_FILE).exists() and not (path / "saved_model.pb").exists()
    loaded = indexes.load_index(path)  # the loader need not know the kind
    assert (
        isinstance(loaded, faiss_indexes.FaissIndex) and loaded.kind == kind and loaded.settings == pair.served.settings
    )
    scores, ids = (t.numpy() for t in loaded(queries, k=50))
    np.testing.assert_array_equal(ids, live_ids)
    np.testing.assert_array_equal(scores, live_scores)
    assert indexes.index_kind(indexes.load_index(tmp_path / "bruteforce")) == "bruteforce"
    np.save(tmp_path / "queries.npy", queries)
    script = (
        "import numpy as np\n"
        "from recsys.retrieval import indexes\n"
        f"index = indexes.load_index({str(path)!r})\n"
        f"scores, ids = index(np.load({str(tmp_path / 'queries.npy')!r}), k=50)\n"
        "print(ids.numpy().tobytes().hex(), scores.numpy().tobytes().hex())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=PROJECT_ROOT, check=True)
    assert out.stdout.split()[-2:] == [live_ids.tobytes().hex(), live_scores.tobytes().hex()]


def test_a_missing_faiss_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="faiss_index.json"):
        faiss_indexes.load_faiss_index(tmp_path)
    with pytest.raises(FileNotFoundError, match="holds no saved index"):
        indexes.load_index(tmp_path)


@pytest.fixture(scope="module")
def query_model():
    """A UserQueryModel over an untrained two-tower (the tiny tables' 8 users) and its movie vectors."""
    users, movies, interactions = tiny_tables()
    encoder = FeatureEncoder.fit(users, movies, interactions[interactions["split"] == "train"])
    config = dataclasses.replace(
        RetrievalConfig.from_params(load_params()["retrieval"]), embedding_dim=8, side_dim=4, features=["user", "movie"]
    )
    tf.keras.utils.set_random_seed(0)
    model = retrieval_model.build_retrieval_model(encoder.cardinalities(), config)
    movie_ids, movie_vectors = retrieval_model.movie_embeddings(model, encoder, encoder.movie_table(movies))
    return indexes.UserQueryModel(model, encoder, encoder.user_table(users)), movie_ids, movie_vectors


@pytest.mark.parametrize("kind", faiss_indexes.FAISS_KINDS)
def test_user_ids_known_or_unknown_get_what_the_query_model_gives_them(query_model, kind, tmp_path):
    model, movie_ids, movie_vectors = query_model
    generous = {**GENEROUS, "ivf_nlist": 2, "ivf_nprobe": 2}
    pair = build_index_pair(model, movie_ids, movie_vectors, {**SCANN, "k": 5}, seed=1, kind=kind, faiss=generous)
    users = tf.constant([1, 8, 3, 99_999, -5, 0], tf.int32)  # 99,999, -5 and 0 are unknown
    expected = model(users).numpy()
    vectors = pair.served.query_vectors(users)
    np.testing.assert_allclose(vectors, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(vectors[3], vectors[4])  # every unknown id: the unknown user's vector
    np.testing.assert_array_equal(vectors[3], vectors[5])
    assert np.abs(vectors[3] - vectors[0]).max() > 1e-3
    exact_ids = pair.bruteforce(users, k=5)[1].numpy()
    np.testing.assert_array_equal(pair.served(users, k=5)[1].numpy(), exact_ids)
    assert indexes.load_index(indexes.save_index(pair.served, tmp_path / "i")).query_vectors(users).tobytes() == (
        vectors.tobytes()
    )
    with pytest.raises(ValueError, match="integer user ids"):
        pair.served(np.zeros((1, 8), np.float32))


def test_a_bad_kind_or_missing_settings_are_refused(catalogue):
    movie_ids, movie_vectors, _ = catalogue
    with pytest.raises(ValueError, match="scann, faiss_hnsw, faiss_ivf, bruteforce; got 'annoy'"):
        build_index_pair(None, movie_ids, movie_vectors, SCANN, 3, kind="annoy")
    with pytest.raises(ValueError, match="faiss settings lack"):
        build_index_pair(None, movie_ids, movie_vectors, SCANN, 3, kind="faiss_hnsw")
    with pytest.raises(ValueError, match="ivf_nprobe"):
        build_index_pair(None, movie_ids, movie_vectors, SCANN, 3, kind="faiss_ivf", faiss={"ivf_nlist": 8})
    with pytest.raises(ValueError, match="nprobe=9: must be between 1 and nlist"):
        build("faiss_ivf", catalogue, {**GENEROUS, "ivf_nprobe": 9})
    with pytest.raises(ValueError, match="nlist=500"):
        build("faiss_ivf", catalogue, {**GENEROUS, "ivf_nlist": 500})
    with pytest.raises(ValueError, match="one of"):
        faiss_indexes.FaissIndex("faiss_pq", None, movie_ids, K, {})


def test_kind_bruteforce_saves_the_exact_index_as_the_served_one(catalogue, tmp_path):
    _, _, queries = catalogue
    pair = build("bruteforce", catalogue)
    assert pair.save(tmp_path / "bruteforce", tmp_path / "served", queries)
    served = indexes.load_index(tmp_path / "served")
    assert indexes.index_kind(served) == "bruteforce" and served.n_candidates == N_MOVIES
    np.testing.assert_array_equal(served(queries, k=K)[1].numpy(), pair.bruteforce(queries, k=K)[1].numpy())
