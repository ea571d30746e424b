"""The two-tower's negatives (`retrieval.negatives`): in-batch + logQ unchanged, mixed sampling, BPR on popular."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from recsys.core.seeding import set_seed
from recsys.features.encoding import MOVIE_ROW
from recsys.models import negative_sampling, retrieval_model
from recsys.models.configs import NEGATIVES, RetrievalConfig
from recsys.models.movie_rows import with_movie_features
from recsys.models.negative_sampling import NegativeCatalogue
from recsys.models.retrieval_model import SAMPLING_PROBABILITY, TwoTowerRetrievalModel, build_retrieval_model
from recsys.runs.params import load_params
from recsys.training import retrieval_training
from tests.retrieval.test_retrieval import data, small_config  # noqa: F401  (the tiny taste data, a module fixture)

CARDINALITIES = {"user_id": 6, "movie_id": 9, "genres": 2, "title": 3}


def tiny_config(**overrides) -> RetrievalConfig:
    """The default config on ids only, with small vectors (hand-made batches)."""
    return small_config(features=["ids"], embedding_dim=4, **overrides)


def tiny_catalogue(share=None, seed: int = 7) -> NegativeCatalogue:
    """Movies 1..8 (encoded ids), with a popularity skew."""
    share = np.array([8, 4, 2, 1, 1, 0, 0, 0], np.float32) if share is None else np.asarray(share, np.float32)
    return NegativeCatalogue({"movie_id": np.arange(1, len(share) + 1, dtype=np.int32)}, share / share.sum(), seed)


def batch(users, movies, share) -> dict[str, tf.Tensor]:
    return {
        "user_id": tf.constant(users, tf.int32),
        "movie_id": tf.constant(movies, tf.int32),
        SAMPLING_PROBABILITY: tf.constant(share, tf.float32),
    }


# ---- the parameter ---------------------------------------------------------------------------------


def test_negatives_take_a_name_or_a_list_and_refuse_an_unknown_one():
    group = load_params()["retrieval"]
    assert RetrievalConfig.from_params(group).negatives == "inbatch_logq"  # the model before the choice
    assert RetrievalConfig.from_params({**group, "negatives": "mixed"}).negatives == "mixed"
    assert RetrievalConfig.from_params({**group, "negatives": ["bpr_popular", "mixed"]}).negatives == "bpr_popular"
    variants = RetrievalConfig.variants({**group, "negatives": list(NEGATIVES)})
    assert list(variants) == list(NEGATIVES) and all(variants[name].negatives == name for name in NEGATIVES)
    assert list(RetrievalConfig.variants({**group, "negatives": "mixed"})) == ["mixed"]
    for bad in ("hard", ["mixed", "hard"]):
        with pytest.raises(ValueError, match="valid ones are inbatch_logq, mixed, bpr_popular"):
            RetrievalConfig.variants({**group, "negatives": bad})
        with pytest.raises(ValueError, match="'hard' is not a variant"):
            RetrievalConfig.from_params({**group, "negatives": bad if isinstance(bad, str) else ["hard"]})
    with pytest.raises(ValueError, match="empty list"):
        RetrievalConfig.from_params({**group, "negatives": []})
    with pytest.raises(ValueError, match="twice"):
        RetrievalConfig.variants({**group, "negatives": ["mixed", "mixed"]})
    with pytest.raises(ValueError, match="must be >= 1"):
        dataclasses.replace(RetrievalConfig.from_params(group), uniform_negatives=0)
    with pytest.raises(KeyError, match="unknown \\['hard_negatives'\\]"):
        RetrievalConfig.from_params({**group, "hard_negatives": 3})


def test_the_config_round_trips_and_an_old_saved_config_still_loads(tmp_path, data):  # noqa: F811
    config = small_config(negatives="mixed", uniform_negatives=16, bpr_negatives=3, bpr_alpha=0.5)
    assert RetrievalConfig.from_params(json.loads(json.dumps(config.to_dict()))) == config
    old = {k: v for k, v in config.to_dict().items() if k not in ("negatives", "uniform_negatives", "bpr_negatives")}
    old.pop("bpr_alpha")
    loaded = RetrievalConfig.from_params(old)  # saved before the negatives existed: today's model
    assert (loaded.negatives, loaded.uniform_negatives, loaded.bpr_negatives, loaded.bpr_alpha) == (
        "inbatch_logq",
        256,
        8,
        0.75,
    )
    encoder = data["encoder"]
    catalogue = retrieval_training.negative_catalogue(config, encoder, data["train"], data["movie_table"], 1)
    model = build_retrieval_model(encoder.cardinalities(), config, catalogue)
    retrieval_model.save_retrieval_model(model, encoder, tmp_path / "model")
    reloaded, _ = retrieval_model.load_retrieval_model(tmp_path / "model")
    assert reloaded.config == config and reloaded.sampling is None  # it scores; it would need a catalogue to train
    state = json.loads((tmp_path / "model" / "model.json").read_text())
    for key in ("negatives", "uniform_negatives", "bpr_negatives", "bpr_alpha"):
        state["config"].pop(key)
    (tmp_path / "model" / "model.json").write_text(json.dumps(state))
    assert retrieval_model.load_retrieval_model(tmp_path / "model")[0].config.negatives == "inbatch_logq"
    with pytest.raises(ValueError, match="built without"):
        reloaded.compute_loss(batch([1], [1], [0.5]))


# ---- in-batch + logQ: today's model, unchanged ----------------------------------------------------


class UnchangedModel(TwoTowerRetrievalModel):
    """The retrieval model with the loss as it was before the negatives existed (verbatim)."""

    def compute_loss(self, features, training=False):
        features = with_movie_features(features, self._movie_rows)  # the positives' movie rows (tested below)
        query_embeddings = self.query_tower(features)
        candidate_embeddings = self.candidate_tower(features)
        probability = features[SAMPLING_PROBABILITY] if self.config.logq_correction else None

        def softmax_loss():
            return self.task(
                query_embeddings,
                candidate_embeddings,
                candidate_sampling_probability=probability,
                candidate_ids=features["movie_id"],
                compute_metrics=False,
            )

        def no_pairs():
            return tf.reduce_sum(query_embeddings) + tf.reduce_sum(candidate_embeddings)

        return tf.cond(tf.size(features["movie_id"]) > 0, softmax_loss, no_pairs)


def test_inbatch_logq_trains_bit_identically_to_the_unchanged_loss(data, monkeypatch):  # noqa: F811
    config = small_config(negatives="inbatch_logq")
    tables = (data["encoder"], data["train"], data["user_table"], data["movie_table"])

    def train():
        result = retrieval_training.train_retrieval_model(config, *tables, seed=5, epochs=3)
        return result.history["loss"], [w.numpy() for w in result.model.weights]

    losses, weights = train()
    with monkeypatch.context() as patch:
        patch.setattr(retrieval_model, "TwoTowerRetrievalModel", UnchangedModel)
        before_losses, before_weights = train()
    assert losses == before_losses  # exactly: same ops, same draws, same order
    assert len(weights) == len(before_weights)
    for new, old in zip(weights, before_weights, strict=True):
        np.testing.assert_array_equal(new, old)


# ---- every variant learns ------------------------------------------------------------------------


@pytest.mark.parametrize("negatives", NEGATIVES)
def test_each_variant_trains_and_its_loss_falls(data, negatives):  # noqa: F811
    config = small_config(negatives=negatives, uniform_negatives=32, bpr_negatives=4)
    encoder, train, movie_table = data["encoder"], data["train"], data["movie_table"]
    result = retrieval_training.train_retrieval_model(
        config, encoder, train, data["user_table"], movie_table, 2, epochs=5
    )
    assert np.isfinite(result.history["loss"]).all()
    # the loss of every training positive in one batch, before (a fresh model of the same seed) and after
    every = retrieval_training.training_inputs(config, encoder, train, data["user_table"], movie_table)
    set_seed(2)
    catalogue = retrieval_training.negative_catalogue(config, encoder, train, movie_table, 2)
    fresh = build_retrieval_model(encoder.cardinalities(), config, catalogue)
    before, after = float(fresh.compute_loss(every)), float(result.model.compute_loss(every))
    assert after < 0.9 * before, (before, after)
    # the unknown id row stays zero: no sampled negative is a movie without an id row
    assert not result.model.candidate_tower.movie_tower.id_embedding.embeddings.numpy()[0].any()


# ---- mixed negative sampling on a hand-made batch ------------------------------------------------


def test_mixed_appends_uniform_columns_with_the_mixture_correction_and_removes_accidental_hits():
    config = tiny_config(negatives="mixed", uniform_negatives=12, temperature=0.5)
    catalogue = tiny_catalogue(share=[3, 1])  # two movies: the draws often hit a row's own positive
    model = build_retrieval_model(CARDINALITIES, config, catalogue)
    features = batch([1, 2, 3], [1, 2, 1], [0.75, 0.25, 0.75])
    candidates, probability, ids = model._uniform_negatives(features, model.candidate_tower(features), model.sampling)
    assert candidates.shape == (3 + 12, 4) and ids.shape == (15,) and probability.shape == (15,)
    rows = negative_sampling.uniform_rows(12, 2, negative_sampling.step_seed(catalogue.seed, 0))
    np.testing.assert_array_equal(ids.numpy(), np.concatenate([[1, 2, 1], rows.numpy() + 1]))
    share = np.array([0.75, 0.25])[ids.numpy() - 1]
    np.testing.assert_allclose(probability.numpy(), (3 * share + 12 / 2) / (3 + 12), rtol=1e-6)

    # the loss: softmax over the 15 columns, logit - log q, positive on the diagonal, same-movie columns dropped
    queries, columns = model.query_tower(features).numpy(), candidates.numpy()
    logits = queries @ columns.T / 0.5 - np.log(probability.numpy())
    own = ids.numpy()[None, :] == np.array([1, 2, 1])[:, None]
    own[np.arange(3), np.arange(3)] = False  # the positive itself stays
    assert own[:, 3:].any()  # the draws hit a positive: the removal is exercised
    masked = np.where(own, -np.inf, logits)
    expected = np.sum(np.logaddexp.reduce(masked, axis=1) - logits[np.arange(3), np.arange(3)])
    assert float(model.compute_loss(features)) == pytest.approx(expected, rel=1e-5)
    unmasked = np.sum(np.logaddexp.reduce(logits, axis=1) - logits[np.arange(3), np.arange(3)])
    assert abs(unmasked - expected) > 1e-3


def test_mixed_labels_mark_the_batch_diagonal_of_the_wider_logits():
    """TFRS's labels are tf.eye(queries, candidates): extra columns after the batch's own are negatives."""
    import tensorflow_recommenders as tfrs  # after recsys (it selects Keras 2 for TFRS)

    labels = tf.eye(3, 5).numpy()
    assert labels[:, :3].tolist() == np.eye(3).tolist() and not labels[:, 3:].any()
    task = tfrs.tasks.Retrieval()
    queries, candidates = tf.eye(3, 2), tf.concat([tf.eye(3, 2), tf.ones([2, 2])], axis=0)
    logits = queries.numpy() @ candidates.numpy().T
    expected = np.sum(np.logaddexp.reduce(logits, axis=1) - np.diag(logits[:, :3]))
    assert float(task(queries, candidates, compute_metrics=False)) == pytest.approx(expected, rel=1e-6)


# ---- BPR on popular negatives --------------------------------------------------------------------


def test_bpr_loss_is_the_summed_log_sigmoid_of_score_differences_with_own_movies_masked():
    queries = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    positives = np.array([[0.8, 0.6], [0.6, 0.8]], np.float32)
    negatives = np.array([[[0.0, 1.0], [1.0, 0.0]], [[1.0, 0.0], [0.6, 0.8]]], np.float32)
    positive_ids, negative_ids = (
        np.array([5, 6]),
        np.array([[7, 8], [9, 6]]),
    )  # row 2's second negative is its own movie
    loss = negative_sampling.bpr_loss(
        *map(tf.constant, (queries, positives, negatives, positive_ids, negative_ids)), temperature=0.5
    )
    s_pos = np.sum(queries * positives, -1, keepdims=True) / 0.5
    s_neg = np.einsum("bd,bkd->bk", queries, negatives) / 0.5
    terms = -np.log(1 / (1 + np.exp(-(s_pos - s_neg))))
    assert float(loss) == pytest.approx(terms[0, 0] + terms[0, 1] + terms[1, 0], rel=1e-6)


def test_the_model_bpr_loss_uses_k_popularity_draws_per_positive():
    config = tiny_config(negatives="bpr_popular", bpr_negatives=3, temperature=0.5, bpr_alpha=1.0)
    catalogue = tiny_catalogue()
    model = build_retrieval_model(CARDINALITIES, config, catalogue)
    features = batch([1, 2], [1, 3], [0.5, 0.125])
    seed = negative_sampling.step_seed(catalogue.seed, 0)
    cdf = negative_sampling.popularity_cdf(catalogue.share, 1.0)
    rows = negative_sampling.popularity_rows(tf.constant([2, 3]), tf.constant(cdf, tf.float32), seed).numpy()
    queries, positives = model.query_tower(features).numpy(), model.candidate_tower(features).numpy()
    negatives = model.candidate_tower({"movie_id": tf.constant(rows.reshape(-1) + 1)}).numpy().reshape(2, 3, 4)
    expected = negative_sampling.bpr_loss(
        *map(tf.constant, (queries, positives, negatives, np.array([1, 3], np.int32), rows + 1)), temperature=0.5
    )
    assert float(model.compute_loss(features)) == pytest.approx(float(expected), rel=1e-5)


# ---- seeded draws --------------------------------------------------------------------------------


def test_draws_are_seeded_by_seed_and_step_and_popularity_draws_follow_count_to_the_alpha():
    def uniform(seed, step):
        return negative_sampling.uniform_rows(50, 1000, negative_sampling.step_seed(seed, step)).numpy()

    np.testing.assert_array_equal(uniform(3, 4), uniform(3, 4))
    assert not np.array_equal(uniform(3, 4), uniform(3, 5)) and not np.array_equal(uniform(3, 4), uniform(4, 4))
    assert uniform(3, 4).min() >= 0 and uniform(3, 4).max() < 1000

    share = np.array([0.5, 0.0, 0.3, 0.2, 0.0])
    cdf = negative_sampling.popularity_cdf(share, 0.75)
    assert cdf[-1] == 1.0 and cdf[1] == cdf[0]
    rows = negative_sampling.popularity_rows(
        tf.constant([400, 500]), tf.constant(cdf, tf.float32), negative_sampling.step_seed(1, 0)
    ).numpy()
    counts = np.bincount(rows.ravel(), minlength=5) / rows.size
    expected = np.where(share > 0, share**0.75, 0) / np.sum(share[share > 0] ** 0.75)
    np.testing.assert_allclose(counts, expected, atol=0.005)  # 200,000 draws; the unwatched movies never
    with pytest.raises(ValueError, match="no catalogue movie has training positives"):
        negative_sampling.popularity_cdf(np.zeros(3), 0.75)


def test_the_same_seed_draws_the_same_negatives_in_a_fresh_model():
    features = batch([1, 2, 3], [1, 2, 3], [0.4, 0.2, 0.1])
    for negatives in ("mixed", "bpr_popular"):
        config = tiny_config(negatives=negatives, uniform_negatives=6, bpr_negatives=3)
        losses = []
        for seed in (11, 11, 12):
            tf.keras.utils.set_random_seed(0)  # the same initial weights: only the catalogue's seed differs
            model = build_retrieval_model(CARDINALITIES, config, tiny_catalogue(seed=seed))
            losses.append(float(model.compute_loss(features)))
        assert losses[0] == losses[1] and losses[0] != losses[2], (negatives, losses)


def test_an_empty_share_adds_zero_loss_and_zero_gradient_for_the_sampled_variants():
    """A worker's empty share of a last global batch (`sharded_batches`): no draws, a sum over nothing."""
    empty = batch(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32))
    for negatives in ("mixed", "bpr_popular"):
        model = build_retrieval_model(CARDINALITIES, tiny_config(negatives=negatives), tiny_catalogue())

        @tf.function
        def step(features, model=model):
            with tf.GradientTape() as tape:
                loss = model.compute_loss(features, training=True)
            return loss, tape.gradient(loss, model.trainable_variables)

        loss, gradients = step(empty)
        assert float(loss) == 0.0
        assert all(not tf.convert_to_tensor(g).numpy().any() for g in gradients if g is not None)


def test_the_negative_catalogue_holds_the_movies_with_an_id_row_and_their_training_shares(data):  # noqa: F811
    config = small_config(negatives="mixed")
    encoder, movie_table = data["encoder"], data["movie_table"]
    assert retrieval_training.negative_catalogue(small_config(), encoder, data["train"], movie_table, 1) is None
    catalogue = retrieval_training.negative_catalogue(config, encoder, data["train"], movie_table, 1)
    known = movie_table[movie_table["movie_id_idx"] > 0]
    np.testing.assert_array_equal(catalogue.inputs["movie_id"], known["movie_id_idx"].to_numpy())
    assert set(catalogue.inputs) == {"movie_id", "genres", "title", "release_year"} and catalogue.seed == 1
    share = retrieval_training.candidate_sampling_probability(data["train"])
    np.testing.assert_allclose(catalogue.share, share.reindex(known.index, fill_value=0).to_numpy(), rtol=1e-6)


def test_compare_negatives_chooses_the_best_val_recall():
    history = {"loss": [3.0, 2.0], "val_recall_at_100": [0.2, 0.3]}
    results = {
        name: retrieval_training.RetrievalTrainingResult(None, {**history, "val_recall_at_100": recall}, 1.0, 1.0, 10)
        for name, recall in (("inbatch_logq", [0.2, 0.3]), ("mixed", [0.35, 0.31]), ("bpr_popular", [0.1, 0.35]))
    }
    variants = RetrievalConfig.variants({**load_params()["retrieval"], "negatives": list(NEGATIVES)})
    comparison = retrieval_training.compare_negatives(variants, lambda c: results[c.negatives], "val_recall_at_100")
    assert comparison.chosen == "mixed"  # 0.35 first: a tie goes to the earlier variant
    config, result, curve = comparison.best
    assert config.negatives == "mixed" and result is results["mixed"] and curve.best_epoch == 1
    assert list(comparison.others()) == ["inbatch_logq", "bpr_popular"]
    # each variant val did not choose is compared with the chosen one (served as "two_tower") on test, paired
    assert comparison.pairs() == [("two_tower_inbatch_logq", "two_tower"), ("two_tower_bpr_popular", "two_tower")]
    metrics = comparison.metrics()
    assert metrics["two_tower_negatives"] == "mixed" and metrics["val_recall_at_100_two_tower_bpr_popular"] == 0.35
    assert metrics["two_tower_mixed_best_epoch"] == 1 and isinstance(comparison.table(), pd.DataFrame)


# ---- on two workers ------------------------------------------------------------------------------


def write_taste_tables(folder, n_tastes: int = 4, per_taste: int = 60, n_users: int = 160):
    """Tables as the preprocessing writes them (users, movies, interactions with splits): users who watch their taste.

    More movies than the tiny fixture's 60: the workers' early stopping monitors val Recall@100.
    """
    from recsys.training.distributed.jobs import DataFiles

    rng = np.random.default_rng(1)
    taste = np.repeat(np.arange(n_tastes), per_taste)
    genres = ["Action", "Comedy", "Drama", "Horror"][:n_tastes]
    movies = pd.DataFrame(
        {
            "movie_id": np.arange(1, len(taste) + 1),
            "title_clean": [f"{genres[t]} tale {i % 7}" for i, t in enumerate(taste)],
            "year": pd.array(1990 + np.arange(len(taste)) % 10, dtype="Int16"),
        }
    )
    for t, genre in enumerate(genres):
        movies[f"genre_{genre}"] = (taste == t).astype(np.int8)
    user_taste = np.arange(n_users) % n_tastes
    users = pd.DataFrame(
        {
            "user_id": np.arange(1, n_users + 1),
            "gender": np.where(user_taste % 2, "F", "M"),
            "age_group": "25-34",
            "occupation": "writer",
            "zip5": "10001",
            "city": "New York",
            "state": "NY",
        }
    )
    popularity = 1.0 / np.arange(1, per_taste + 1)
    watched = [
        rng.choice(per_taste, 10, replace=False, p=popularity / popularity.sum()) + t * per_taste for t in user_taste
    ]
    interactions = pd.DataFrame(
        {
            "user_id": np.repeat(users["user_id"].to_numpy(), 10),
            "movie_id": movies["movie_id"].to_numpy()[np.concatenate(watched)],
            "rating": 4.0,
            "split": np.tile(["train"] * 7 + ["val"] + ["test"] * 2, n_users),
            "position": np.tile(np.arange(10), n_users),
            "hour": 12,
            "weekday": 3,
            "month": 6,
        }
    )
    files = DataFiles(folder / "interactions.parquet", folder / "users.parquet", folder / "movies.parquet")
    interactions.to_parquet(files.interactions)
    users.to_parquet(files.users)
    movies.to_parquet(files.movies)
    return files


@pytest.mark.slow
@pytest.mark.parametrize("negatives", ["mixed", "bpr_popular"])
def test_the_sampled_variants_train_on_two_workers(tmp_path, negatives):
    """The job path of `compare_negatives`: each worker holds the catalogue, draws its own negatives, stops on val."""
    from recsys.training.distributed.jobs import Distribute, retrieval_fitter

    files = write_taste_tables(tmp_path)
    config = small_config(negatives=negatives, uniform_negatives=32, bpr_negatives=4, epochs=4, patience=4)
    fit = retrieval_fitter(Distribute("multi_worker", 2, 600, 0, ()), files, tmp_path / "jobs", None, 2, None)
    two = fit(config)
    losses, recall = two.history["loss"], two.history["val_recall_at_100"]
    assert np.isfinite(losses).all() and len(recall) == 4 and two.model.config == config
    assert max(recall) > 0.8, recall  # drawn at random, 100 of the 233 unseen movies find about 0.43
    assert (tmp_path / "jobs" / f"two_tower_{negatives}" / "model" / "model.json").exists()


# ---- the movie features of the positives, kept once per movie --------------------------------------


def test_the_positives_carry_movie_rows_that_gather_to_the_per_positive_inputs(data):  # noqa: F811
    config = small_config()
    tables = (data["encoder"], data["train"], data["user_table"], data["movie_table"])
    examples, movies = retrieval_training.training_examples(config, *tables)
    # the inputs of each positive straight from the encoder: every input the model reads, and logQ's probability
    train = retrieval_training.positives(data["train"], config.min_rating)
    user_names, movie_names, context_names = retrieval_model.model_inputs(config, data["encoder"].cardinalities())
    every = data["encoder"].interaction_inputs(train, data["user_table"], data["movie_table"], bool(context_names))
    flat = {name: every[name] for name in (*user_names, *movie_names, *context_names)}
    share = retrieval_training.candidate_sampling_probability(train)
    flat[SAMPLING_PROBABILITY] = share.loc[train["movie_id"]].to_numpy(np.float32)
    rows = examples.pop(MOVIE_ROW)
    gathered = {**examples, **{name: value[rows] for name, value in movies.items()}}
    assert gathered.keys() == flat.keys() and "movie_id" not in movies
    for name, value in flat.items():
        np.testing.assert_array_equal(gathered[name], value, err_msg=name)


@pytest.mark.parametrize("negatives", NEGATIVES)
def test_training_on_movie_rows_is_bit_identical_to_training_on_per_positive_inputs(data, negatives):  # noqa: F811
    config = small_config(negatives=negatives, uniform_negatives=32, bpr_negatives=4)
    tables = (data["encoder"], data["train"], data["user_table"], data["movie_table"])
    result = retrieval_training.train_retrieval_model(config, *tables, seed=3, epochs=2)
    set_seed(3)  # as train_retrieval_model did before: every movie input repeated per positive
    inputs = {k: tf.convert_to_tensor(v) for k, v in retrieval_training.training_inputs(config, *tables).items()}
    catalogue = retrieval_training.negative_catalogue(config, data["encoder"], data["train"], data["movie_table"], 3)
    model = build_retrieval_model(data["encoder"].cardinalities(), config, catalogue)
    history = model.fit(inputs, batch_size=config.batch_size, epochs=2, shuffle=True, verbose=0)
    assert result.history["loss"] == history.history["loss"]
    for new, old in zip(result.model.weights, model.weights, strict=True):
        np.testing.assert_array_equal(new.numpy(), old.numpy())
    with pytest.raises(ValueError, match="set_movie_rows"):  # the rows are set for the length of fit only
        result.model.compute_loss({**batch([1], [1], [0.5]), MOVIE_ROW: tf.constant([0])})
