"""The leakage guard reads what each feature source was fitted on from its fit record, not from its label."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from recsys.data.rating_scale import RatingScale
from recsys.evaluation.full_ranking import split_matrices
from recsys.features.fit_records import RunInteractions
from recsys.models.configs import RatingConfig, RetrievalConfig
from recsys.models.ease import EASE, load_ease, save_ease
from recsys.ranking.learned_ranking import feature_sources, stage_feature_sources, with_rating_model
from recsys.ranking.ranker_features import LeakageError, SourceRecordError
from recsys.runs.params import load_params
from tests.online_fixtures import tiny_store_and_encoder

DEFAULTS = load_params()
CONTEXT = {"hour": 20, "weekday": 4, "month": 12}
SCALE = RatingScale(1.0, 5.0, 1.0)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The tiny run: its stores, EASE saved as fitted on train, rating models fitted on train and on train + val."""
    from recsys.features.feature_store import FeatureStore
    from recsys.training import rating_training

    folder = tmp_path_factory.mktemp("run")
    store, encoder, (users, movies, interactions) = tiny_store_and_encoder()
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(store.users), 4)), rng.normal(size=(len(store.movies), 4))
    store.with_vectors(*vectors)
    test_store = FeatureStore.build(users, movies, interactions, history_splits=("train", "val")).with_vectors(*vectors)
    catalogue = store.movies.index.to_numpy()
    matrices = split_matrices(interactions, store.users.index.to_numpy(), catalogue)
    save_ease(EASE(10.0).fit(matrices.train), catalogue, folder / "ease", fitted_on=("train",))
    config = dataclasses.replace(RatingConfig.from_params(DEFAULTS["rating"]), embedding_dim=4, side_dim=2)
    user_table, movie_table = encoder.user_table(users), encoder.movie_table(movies)

    def rating_model(splits, label, name):
        frame = interactions[interactions["split"].isin(splits)]
        inputs = encoder.example_inputs(frame, user_table, movie_table)
        ratings = frame["rating"].to_numpy(np.float32)
        fitted = rating_training.train_rating_model(config, encoder.cardinalities(), inputs, ratings, 0, epochs=1)
        return rating_training.save_rating_model(fitted.model, encoder, folder / name, fitted_on=label, scale=SCALE)

    return {
        "stores": {"val": store, "test": test_store},
        "interactions": interactions,
        "matrices": matrices,
        "catalogue": catalogue,
        "tables": (users, movies),
        "ease": folder / "ease",
        "rating_train": rating_model(("train",), ("train",), "rating_train"),
        "rating_refit": rating_model(("train", "val"), ("train", "val"), "rating_refit"),
        "folder": folder,
    }


def candidates(run, stage):
    from recsys.retrieval.retrievers import NumpyRetriever
    from recsys.serving.recommender import retrieve_candidates

    store = run["stores"][stage]
    retriever = NumpyRetriever(store.users.index, store.user_vectors, run["catalogue"], store.movie_vectors)
    exclude = "history" if stage == "val" else "seen"
    return retrieve_candidates(store.users.index.to_numpy(), 5, store=store, retrieval_index=retriever, exclude=exclude)


def sources_of(run, stage, ease=None, rating=None, **kwargs):
    store, ease, rating = run["stores"][stage], ease or run["ease"], rating or run["rating_train"]
    return feature_sources(store, ease, rating, 5, CONTEXT, **kwargs)


def test_sources_fitted_on_train_are_read_as_train_from_their_records(run):
    fits = RunInteractions(run["interactions"])
    for stage in ("val", "test"):
        sources = sources_of(run, stage, interactions=fits)
        assert sources.fitted_on == {"retrieval": ("train",), "ease": ("train",), "rating_model": ("train",)}
        assert sources.fits is fits
        sources.build(candidates(run, stage), stage)


def test_stage_sources_load_each_model_once_and_build_what_each_per_store_call_builds(run):
    stores, args = run["stores"], (run["ease"], run["rating_train"], 5, CONTEXT, run["interactions"])
    shared = stage_feature_sources(stores, *args)
    assert list(shared) == ["val", "test"]
    assert shared["val"].fits is shared["test"].fits  # one RunInteractions: encodings and fit records once
    assert shared["val"].ease.weights is shared["test"].ease.weights  # one copy of EASE's weights
    assert shared["val"].ease is not shared["test"].ease  # each stage keeps its own last EASE scores
    for stage, store in stores.items():
        alone = feature_sources(store, *args)
        assert shared[stage].store is store and shared[stage].fitted_on == alone.fitted_on
        table = candidates(run, stage)
        assert shared[stage].build(table, stage).equals(alone.build(table, stage))
    # the stores differ (train history at val, train + val at test): so do their features
    table = candidates(run, "test")
    assert not shared["val"].build(table, "test").equals(shared["test"].build(table, "test"))


def test_an_ease_fitted_on_train_val_but_labelled_train_is_refused(run):
    matrices = run["matrices"]
    train_val = EASE(10.0).fit(matrices.seen("test"))
    mislabelled = save_ease(train_val, run["catalogue"], run["folder"] / "ease_mislabelled", fitted_on=("train",))
    assert load_ease(mislabelled)[2] == ("train",)  # what the label says
    for stage in ("val", "test"):
        with pytest.raises(SourceRecordError, match=r"'ease' is labelled as fitted on \['train'\], but the data says"):
            sources_of(run, stage, ease=mislabelled, interactions=run["interactions"])
    # labelled truthfully, it is a source fitted on val: the val stage refuses it, the test stage may read it
    honest = save_ease(train_val, run["catalogue"], run["folder"] / "ease_honest", fitted_on=("train", "val"))
    val_sources = sources_of(run, "val", ease=honest, interactions=run["interactions"])
    assert val_sources.fitted_on["ease"] == ("train", "val")
    with pytest.raises(LeakageError, match=r"val stage.*'ease': \['train', 'val'\]"):
        val_sources.build(candidates(run, "val"), "val")
    sources_of(run, "test", ease=honest, interactions=run["interactions"]).build(candidates(run, "test"), "test")
    # without the run's interactions nothing can be checked: the label is taken as it is (a run of old notebooks)
    assert sources_of(run, "val", ease=mislabelled).fitted_on["ease"] == ("train",)


def test_a_source_fitted_on_data_of_no_split_set_is_refused(run):
    train = run["matrices"].train.tolil()
    row, column = train.nonzero()
    train[row[0], column[0]] = 0  # one train rating fewer: not this run's train split
    other = save_ease(EASE(10.0).fit(train.tocsr()), run["catalogue"], run["folder"] / "ease_other", fitted_on=None)
    with pytest.raises(SourceRecordError, match=r"'ease' \(no label\).*matches none of them \(ratings: train"):
        sources_of(run, "val", ease=other, interactions=run["interactions"])


def test_a_rating_model_is_read_as_fitted_on_what_its_inputs_were(run):
    from recsys.training.rating_training import load_rating_model

    fits = RunInteractions(run["interactions"])
    mislabelled, encoder = load_rating_model(run["rating_refit"])
    mislabelled.fitted_on = ("train",)  # the refit, as if it were the train-only model
    with pytest.raises(SourceRecordError, match=r"'rating_model' is labelled as fitted on \['train'\]"):
        with_rating_model(sources_of(run, "val", interactions=fits), mislabelled, encoder, CONTEXT)
    refit, encoder = load_rating_model(run["rating_refit"])
    leaky = with_rating_model(sources_of(run, "val", interactions=fits), refit, encoder, CONTEXT)
    assert leaky.fitted_on["rating_model"] == ("train", "val")
    with pytest.raises(LeakageError, match="rating_model"):
        leaky.build(candidates(run, "val"), "val")
    # the refit's folder given as the train-only model's: its record and label both say train + val
    assert sources_of(run, "val", rating=run["rating_refit"], interactions=fits).fitted_on["rating_model"] == (
        "train",
        "val",
    )


def test_the_two_tower_records_its_training_positives_and_a_train_val_fit_is_refused_at_the_val_stage(run, tmp_path):
    from recsys.features.encoding import FeatureEncoder
    from recsys.models.retrieval_model import load_retrieval_model, save_retrieval_model
    from recsys.training.retrieval_training import positives, train_retrieval_model

    users, movies = run["tables"]
    interactions, fits = run["interactions"], RunInteractions(run["interactions"])
    config = dataclasses.replace(
        RetrievalConfig.from_params(DEFAULTS["retrieval"]), embedding_dim=4, side_dim=2, batch_size=16, min_rating=3
    )
    liked = positives(interactions, config.min_rating)
    encoder = FeatureEncoder.fit(users, movies, liked[liked["split"] == "train"], min_title_token_count=1)
    tables = encoder.user_table(users), encoder.movie_table(movies)
    on_train = train_retrieval_model(config, encoder, liked[liked["split"] == "train"], *tables, seed=0, epochs=1)
    model, loaded_encoder = load_retrieval_model(save_retrieval_model(on_train.model, encoder, tmp_path / "two_tower"))
    assert model.fit_record == on_train.model.fit_record == fits.record(("train",), 3, "encoder", encoder)
    val_sources = sources_of(run, "val", interactions=fits, retriever=(model, loaded_encoder))
    assert val_sources.fitted_on["retrieval"] == ("train",)
    before_test = liked[liked["split"] != "test"]
    on_train_val = train_retrieval_model(config, encoder, before_test, *tables, seed=0, epochs=1).model
    leaky = sources_of(run, "val", interactions=fits, retriever=(on_train_val, encoder))
    assert leaky.fitted_on["retrieval"] == ("train", "val")
    with pytest.raises(LeakageError, match=r"val stage.*'retrieval': \['train', 'val'\]"):
        leaky.build(candidates(run, "val"), "val")


def test_the_joint_model_is_read_as_fitted_on_what_its_ratings_were(run):
    """The joint score's model: a fit on train is a train source; a refit on train + val saved as 'train' is refused."""
    from recsys.models.multitask_model import MultitaskConfig, save_multitask_model
    from recsys.training import multitask_training as mt

    users, movies = run["tables"]
    data = mt.multitask_data(users, movies, run["interactions"], SCALE)
    config = dataclasses.replace(
        MultitaskConfig.from_params(DEFAULTS["multitask"]), embedding_dim=4, side_dim=2, batch_size=64, max_epochs=1
    )
    on_train = mt.fit_for_epochs(config, (1.0, 1.0), data, ("train",), 0, 1).model
    on_train_val = mt.refit_on_train_val(config, (1.0, 1.0), data, 0, 1).model
    folder = run["folder"]
    train_folder = save_multitask_model(on_train, data.encoder, folder / "joint_train", ("train",), SCALE)
    mislabelled = save_multitask_model(on_train_val, data.encoder, folder / "joint_mislabelled", ("train",), SCALE)
    honest = save_multitask_model(on_train_val, data.encoder, folder / "joint_honest", ("train", "val"), SCALE)
    fits = RunInteractions(run["interactions"])
    sources = sources_of(run, "val", interactions=fits, joint_folder=str(train_folder))
    assert sources.fitted_on["joint_model"] == ("train",) and "joint_score" in sources.features
    sources.build(candidates(run, "val"), "val")
    with pytest.raises(SourceRecordError, match=r"'joint_model' is labelled as fitted on \['train'\], but the data"):
        sources_of(run, "val", interactions=fits, joint_folder=str(mislabelled))
    with pytest.raises(LeakageError, match=r"val stage.*'joint_model': \['train', 'val'\]"):
        sources_of(run, "val", interactions=fits, joint_folder=str(honest)).build(candidates(run, "val"), "val")
    sources_of(run, "test", interactions=fits, joint_folder=str(honest)).build(candidates(run, "test"), "test")
