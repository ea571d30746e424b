"""The joint multitask model: its loss, head weights, early-stopping rule, training, the sweep's choice, save/load."""

from __future__ import annotations

import dataclasses

import matplotlib
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from recsys.core.seeding import set_seed
from recsys.data.loader import read_movielens
from recsys.data.rating_scale import RatingScale
from recsys.data.synthetic import generate_synthetic
from recsys.features import preprocessing, splits
from recsys.models import multitask_model, retrieval_model
from recsys.models.configs import RatingConfig
from recsys.models.multitask_model import MultitaskConfig, TaskWeights, build_multitask_model
from recsys.models.retrieval_model import SAMPLING_PROBABILITY
from recsys.runs.params import load_params
from recsys.training import multitask_sweep as ms
from recsys.training import multitask_training as mt
from recsys.training import rating_training, retrieval_training
from tests.retrieval.test_retrieval import small_config

matplotlib.use("Agg")

CONFIG = MultitaskConfig(
    features=["user", "movie", "context"],
    embedding_dim=8,
    side_dim=4,
    mlp_layers=[],
    dropout=0.0,
    l2=0.01,
    bias_l2=0.01,
    init_std=0.1,
    id_learning_rate=0.005,
    learning_rate=0.01,
    temperature=0.2,
    logq_correction=True,
    remove_accidental_hits=True,
    retrieval_projection=True,
    batch_size=128,
    retrieval_group=64,
    max_epochs=4,
    patience=10,
    weight_pairs=[[1.0, 0.0], [0.0, 1.0], [1.0, 0.5]],
    rmse_tolerance=0.005,
)


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Generated ML-1M-format ratings (80 users, 150 movies), split at random as the preprocessing notebook does."""
    folder = generate_synthetic(tmp_path_factory.mktemp("multitask"), 80, 150, 30, 3, 0.5, seed=7)
    raw = read_movielens("ml-1m", folder)
    users, _ = preprocessing.user_features(raw.users)
    movies = preprocessing.movie_features(raw.movies)
    ratings = raw.ratings.assign(split=splits.assign_split(raw.ratings, "random", 0.1, 0.1, seed=7))
    return users, movies, preprocessing.build_interactions(ratings, users, movies)


@pytest.fixture(scope="module")
def data(tables) -> mt.MultitaskData:
    return mt.multitask_data(*tables, RatingScale(1, 5, 1))


def batch(data: mt.MultitaskData, n: int = 64):
    """The first n train ratings as one training batch (features with logQ probabilities, ratings)."""
    inputs, ratings = mt.training_examples(CONFIG, data, data.split("train"), use_context=True)
    flat = {name: tf.constant(value[:n]) for name, value in inputs.flat().items()}
    flat[SAMPLING_PROBABILITY] = tf.constant(inputs.examples[SAMPLING_PROBABILITY][:n])
    return flat, tf.constant(ratings[:n])


def fresh(data: mt.MultitaskData, weights, seed: int = 3) -> multitask_model.MultitaskModel:
    set_seed(seed)
    return build_multitask_model(data.encoder.cardinalities(), CONFIG, weights, 3.6)


# ---- weights and loss ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pair", "message"),
    [((-0.1, 1), "finite numbers >= 0"), ((1, float("nan")), "finite"), ((0, 0), r"\(0, 0\) train nothing")],
)
def test_task_weights_refuse_negative_nan_and_both_zero(pair, message):
    with pytest.raises(ValueError, match=message):
        TaskWeights.of(pair)


def test_task_weights_read_pairs_and_labels():
    weights = TaskWeights.of("1,0.1")
    assert weights == TaskWeights.of((1, 0.1)) == TaskWeights(1.0, 0.1)
    assert weights.label == "1,0.1" and weights.key == "r1_t0p1"
    with pytest.raises(ValueError, match="a pair"):
        TaskWeights.of([1, 2, 3])


def test_the_loss_is_the_weighted_sum_of_the_two_head_means(data):
    inputs = batch(data)
    mixed = fresh(data, (1.0, 0.5))
    rating, retrieval = mixed.task_losses(inputs)
    assert float(mixed.compute_loss(inputs)) == pytest.approx(float(rating) + 0.5 * float(retrieval), rel=1e-6)
    # both are means over the batch: the retrieval loss of an untrained model is about log(batch size)
    assert 1 < float(retrieval) < 3 * np.log(64)
    # the same initial weights (same seed): a head of weight 0 is left out, the other is the whole loss
    assert float(fresh(data, (1, 0)).compute_loss(inputs)) == pytest.approx(float(rating), rel=1e-6)
    assert float(fresh(data, (0, 2)).compute_loss(inputs)) == pytest.approx(2 * float(retrieval), rel=1e-6)


@pytest.mark.parametrize(
    ("weights", "idle", "active"), [((1, 0), "retrieval", "rating"), ((0, 1), "rating", "retrieval")]
)
def test_a_head_of_weight_zero_gets_no_gradient(data, weights, idle, active):
    model, inputs = fresh(data, weights), batch(data)
    parts = model.head_variables()
    with tf.GradientTape(persistent=True) as tape:
        loss = model.compute_loss(inputs, training=True)
    gradients = tape.gradient(loss, parts[idle] + parts[active])

    def norm(g):
        return 0.0 if g is None else float(tf.norm(tf.convert_to_tensor(g)))

    assert all(norm(g) == 0.0 for g in gradients[: len(parts[idle])])
    assert sum(norm(g) for g in gradients[len(parts[idle]) :]) > 0
    assert norm(tape.gradient(loss, model.user_tower.id_embedding.embeddings)) > 0  # the shared tower learns


@pytest.mark.parametrize("group", [0, 32, 64])
def test_the_softmax_runs_per_group_and_pads_the_last(data, group):
    """Groups of `retrieval_group` examples are separate in-batch softmaxes; a short last group is padded, not mixed."""
    model = fresh(data, (0, 1))
    model.multitask_config = dataclasses.replace(CONFIG, retrieval_group=group)
    features, _ = batch(data, 40)
    q, c = model.query_vectors(features), model.candidate_vectors(features)
    p, ids = features[SAMPLING_PROBABILITY], features["movie_id"]

    def task_sum(rows: slice) -> float:
        args = {"candidate_sampling_probability": p[rows], "candidate_ids": ids[rows], "compute_metrics": False}
        return float(tf.reduce_sum(model.retrieval_task(q[rows], c[rows], **args)))

    cuts = [0, 32, 40] if group == 32 else [0, 40]  # 64 > 40: one padded group, as the whole batch
    expected = sum(task_sum(slice(a, b)) for a, b in zip(cuts, cuts[1:])) / 40
    assert float(model._softmax_loss(q, c, p, ids)) == pytest.approx(expected, rel=1e-5)


def test_logq_without_its_input_is_refused(data):
    features, ratings = batch(data)
    del features[SAMPLING_PROBABILITY]
    with pytest.raises(ValueError, match="logQ correction needs"):
        fresh(data, (1, 1)).compute_loss((features, ratings))


# ---- the rule that keeps an epoch -------------------------------------------------------------------


def test_chosen_epoch_reads_the_weights():
    rmse = [0.95, 0.90, 0.902, 0.91, 0.93]
    recall = [0.30, 0.35, 0.38, 0.40, 0.41]
    assert mt.chosen_epoch(rmse, recall, TaskWeights(1, 0), 0.005) == 2  # lowest RMSE
    assert mt.chosen_epoch(rmse, [np.nan] * 5, TaskWeights(1, 0), 0.005) == 2  # recall not read
    assert mt.chosen_epoch(rmse, recall, TaskWeights(0, 1), 0.005) == 5  # highest recall
    assert mt.chosen_epoch(rmse, recall, TaskWeights(1, 1), 0.005) == 3  # best recall within 0.005 of 0.90
    assert mt.chosen_epoch(rmse, recall, TaskWeights(1, 1), 0.02) == 4
    assert mt.chosen_epoch([0.9, 0.9], [0.3, 0.3], TaskWeights(1, 1), 0.0) == 1  # a tie: the earlier epoch
    # the epochs that may still be chosen: none is matched or beaten on both metrics
    assert mt.candidate_epochs(rmse, recall, TaskWeights(1, 1)) == [2, 3, 4, 5]
    assert mt.candidate_epochs(rmse, recall, TaskWeights(1, 0)) == [2]
    assert mt.candidate_epochs(rmse, recall, TaskWeights(0, 1)) == [5]


def test_choose_on_val_keeps_the_best_recall_within_the_tolerance():
    table = pd.DataFrame(
        {
            "w_rating": [1, 0, 1, 1, 1],
            "w_retrieval": [0, 1, 0.1, 0.3, 1],
            "val_rmse": [0.860, 1.900, 0.862, 0.8649, 0.870],
            "val_recall_at_100": [0.30, 0.60, 0.55, 0.59, 0.61],
        },
        index=["1,0", "0,1", "1,0.1", "1,0.3", "1,1"],
    )
    choice = ms.choose_on_val(table, 0.005)  # the sweep's own specialists
    assert choice.label == "1,0.3" and choice.weights == TaskWeights(1, 0.3) and choice.qualified
    assert choice.table.loc["1,0.3", "meets_recall_target"]  # 0.59 >= 0.98 x 0.60
    assert not choice.table.loc["1,0.1", "meets_recall_target"]
    # against a stronger rating specialist nothing qualifies: the lowest val RMSE, said so
    fallback = ms.choose_on_val(table, 0.005, specialist_val_rmse=0.850, specialist_val_recall=0.62)
    assert fallback.label == "1,0" and not fallback.qualified and "fallback" in fallback.reason
    with pytest.raises(ValueError, match="specialist"):
        ms.choose_on_val(table.drop(index="0,1"), 0.005)


# ---- training, the sweep, save and load -------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(data) -> mt.MultitaskResult:
    return mt.train_multitask_model(CONFIG, (1, 0.5), data, seed=5)


def test_training_lowers_both_losses_and_keeps_the_chosen_epoch(data, trained):
    history = trained.history
    assert history["rating_loss"][-1] < history["rating_loss"][0]
    assert history["retrieval_loss"][-1] < history["retrieval_loss"][0]
    epochs = len(history["loss"])
    assert epochs == CONFIG.max_epochs  # patience 10: no early stop
    expected = mt.chosen_epoch(history[mt.RMSE_KEY], history[mt.RECALL_KEY], trained.weights, CONFIG.rmse_tolerance)
    assert trained.best_epoch == expected
    assert trained.val_rmse == history[mt.RMSE_KEY][expected - 1]
    assert trained.val_recall_at_100 == history[mt.RECALL_KEY][expected - 1]
    # the model holds the kept epoch's weights: its val RMSE is the logged one
    val = data.split("val")
    inputs = data.encoder.example_inputs(val, data.user_table, data.movie_table, True).flat()
    rmse = np.sqrt(np.mean((multitask_model.predict_ratings(trained.model, inputs) - val["rating"].to_numpy()) ** 2))
    assert rmse == pytest.approx(trained.val_rmse, rel=1e-5)


def test_training_is_seeded(data, trained):
    again = mt.train_multitask_model(CONFIG, (1, 0.5), data, seed=5)
    assert again.history == trained.history
    other = mt.train_multitask_model(dataclasses.replace(CONFIG, max_epochs=1), (1, 0.5), data, seed=6)
    assert other.history["loss"][0] != trained.history["loss"][0]


def test_refit_trains_on_train_and_val_for_the_given_epochs(data):
    refit = mt.refit_on_train_val(CONFIG, (1, 0.5), data, seed=5, epochs=2)
    assert len(refit.history["loss"]) == 2 and mt.RMSE_KEY not in refit.history
    assert refit.n_examples == len(data.split("train", "val")) and refit.val_rmse is None
    with pytest.raises(ValueError, match="at least one epoch"):
        mt.refit_on_train_val(CONFIG, (1, 0.5), data, seed=5, epochs=0)


def test_sweep_table_choice_figure_and_metrics(data):
    config = dataclasses.replace(CONFIG, max_epochs=2)
    result = ms.sweep(config.weight_pairs, config, data, seed=5)
    table = result.table
    assert list(table.index) == ["1,0", "0,1", "1,0.5"]
    assert (table[["val_rmse", "rmse"]] > 0).all().all()
    for column in ("val_recall_at_100", "recall_at_10", "recall_at_100", "ndcg_at_10"):
        assert table[column].between(0, 1).all(), column
    assert (table["test_fitted_on"] == "train").all()
    assert "val_recall_at_100" not in result.fits["1,0"].history  # rating only: recall once, at the end
    choice = ms.choose_on_val(table, config.rmse_tolerance)
    figure = ms.tradeoff_figure(choice.table, "val", 0.9, 0.5, config.rmse_tolerance, chosen=choice.label)
    assert isinstance(figure, matplotlib.figure.Figure)
    chosen = result.fits[choice.label]
    scores = mt.evaluate_on_test(chosen.model, data)
    out = ms.multitask_metrics(result, choice, scores, chosen.best_epoch)
    for key in ("rmse_multitask", "recall_at_100_multitask", "recall_at_10_multitask", "ndcg_at_10_multitask"):
        assert isinstance(out[key], float)
    assert out["multitask_weights"] == choice.label
    assert {"val_rmse_multitask_r1_t0", "recall_at_100_multitask_r0_t1", "ndcg_at_10_multitask_r1_t0p5"} <= set(out)
    with pytest.raises(ValueError, match="distinct weight pairs"):
        ms.sweep([(1, 0), "1,0"], config, data, seed=5)


def test_save_and_load_give_the_same_scores(data, trained, tmp_path):
    model = trained.model
    folder = multitask_model.save_multitask_model(model, data.encoder, tmp_path / "m", ("train",), data.scale)
    loaded, encoder = multitask_model.load_multitask_model(folder)
    assert loaded.task_weights == model.task_weights and loaded.fitted_on == ("train",)
    assert loaded.fit_record == model.fit_record and loaded.rating_scale == data.scale
    pairs = data.split("test")[["user_id", "movie_id", "hour", "weekday", "month"]]
    before = multitask_model.pair_scores(model, data.encoder, data.user_table, data.movie_table, pairs)
    after = multitask_model.pair_scores(loaded, encoder, data.user_table, data.movie_table, pairs)
    pd.testing.assert_frame_equal(before, after)
    assert before["retrieval_score"].abs().max() <= 1 + 1e-5  # cosines
    ids, vectors = multitask_model.movie_vectors(loaded, encoder, data.movie_table)
    assert np.allclose(np.linalg.norm(vectors[np.linalg.norm(vectors, axis=1) > 0], axis=1), 1, atol=1e-5)
    with pytest.raises(KeyError, match="context"):
        multitask_model.pair_scores(
            model, data.encoder, data.user_table, data.movie_table, pairs[["user_id", "movie_id"]]
        )


def test_specialists_score_the_saved_models_as_their_notebooks_do(tables, data, tmp_path):
    """The rating specialist's val RMSE is the one its own early stopping logged; recalls are full-ranking shares."""
    users, movies, _ = tables
    rating_config = dataclasses.replace(
        RatingConfig.from_params(load_params()["rating"]), embedding_dim=8, side_dim=4, batch_size=128, max_epochs=3
    )
    frames = {s: data.split(s) for s in ("train", "val")}
    inputs = {s: data.encoder.example_inputs(f, data.user_table, data.movie_table) for s, f in frames.items()}
    labels = {s: f["rating"].to_numpy(np.float32) for s, f in frames.items()}
    cardinalities = data.encoder.cardinalities()
    fitted = rating_training.train_rating_model(
        rating_config, cardinalities, inputs["train"], labels["train"], 3, inputs["val"], labels["val"]
    )
    folders = {name: tmp_path / name for name in ("rating_model_train", "rating_model", "retrieval_model")}
    for name in ("rating_model_train", "rating_model"):
        rating_training.save_rating_model(fitted.model, data.encoder, folders[name], ("train",), data.scale)
    retrieval = retrieval_training.train_retrieval_model(
        small_config(), data.encoder, frames["train"], data.user_table, data.movie_table, seed=3, epochs=2
    )
    retrieval_model.save_retrieval_model(retrieval.model, data.encoder, folders["retrieval_model"])
    numbers = mt.specialists(data, users, movies, folders.__getitem__)
    assert numbers["val_rmse"] == pytest.approx(min(fitted.history["val_root_mean_squared_error"]), rel=1e-5)
    assert numbers["rmse"] <= numbers["val_rmse"] + 1  # test, clipped to the scale
    assert 0 < numbers["val_recall_at_100"] <= 1 and 0 < numbers["recall_at_100"] <= 1


def test_against_specialists_compares_each_target_on_its_specialists_footing():
    """RMSE: the refit against the rating model's refit; Recall@100: the fit on train against the two-tower's fit."""
    table = pd.DataFrame(
        {"recall_at_100": [0.50, 0.60], "test_fitted_on": ["train", "train"]}, index=pd.Index(["1,0", "1,1"])
    )
    specialist = {"rmse": 0.860, "recall_at_100": 0.600}
    out = ms.against_specialists(table, "1,1", {"rmse": 0.864, "recall_at_100": 0.99}, specialist, 0.005)
    assert out.loc["test RMSE", "gap or ratio"] == pytest.approx(0.004) and out.loc["test RMSE", "met"]
    assert out.loc["test Recall@100", "joint"] == 0.60  # the sweep's row (train), not the refit's 0.99
    assert out.loc["test Recall@100", "gap or ratio"] == pytest.approx(1.0) and out.loc["test Recall@100", "met"]
    missed = ms.against_specialists(table, "1,0", {"rmse": 0.866}, specialist, 0.005)
    assert missed["met"].tolist() == [False, False]  # 0.006 over; 0.833 x
    with pytest.raises(ValueError, match="fit on train"):
        ms.against_specialists(table.assign(test_fitted_on="train+val"), "1,1", {"rmse": 0.86}, specialist, 0.005)
