"""The two-tower refit on train + val (retrieval_training.refit_on_train_val): the given epochs, no early stopping."""

from __future__ import annotations

import pytest

from recsys.evaluation import full_ranking
from recsys.training import retrieval_training
from recsys.training.retrieval_inputs import RetrievalInputs
from tests.retrieval.test_retrieval import data, small_config  # noqa: F401  (the tiny taste data, a module fixture)


def run_inputs(data, positives):  # noqa: F811
    """The RetrievalInputs of the tiny data with `positives` as the run's positives."""
    matrices = full_ranking.split_matrices(
        positives, data["users"]["user_id"].to_numpy(), data["movie_table"].index.to_numpy()
    )
    tables = data["encoder"], data["user_table"], data["movie_table"]
    return RetrievalInputs(positives, *tables, matrices, not_in_release=[])


def test_the_refit_learns_from_train_and_val_for_exactly_the_given_epochs(data):  # noqa: F811
    positives, config = data["interactions"], small_config(epochs=15, patience=1)
    refit = retrieval_training.refit_on_train_val(config, run_inputs(data, positives), seed=3, epochs=3)
    assert len(refit.history["loss"]) == 3 and "val_recall_at_100" not in refit.history  # no monitor, no stopping
    before_test = positives[positives["split"] != "test"]
    assert refit.n_positives == len(before_test) > len(data["train"])
    direct = retrieval_training.train_retrieval_model(
        config, data["encoder"], before_test, data["user_table"], data["movie_table"], seed=3, epochs=3
    )
    assert refit.history["loss"] == direct.history["loss"]  # the same fresh model, seed and examples


def test_the_refit_refuses_no_epochs_and_a_split_without_val(data):  # noqa: F811
    with pytest.raises(ValueError, match="at least one epoch"):
        retrieval_training.refit_on_train_val(small_config(), run_inputs(data, data["interactions"]), seed=3, epochs=0)
    with pytest.raises(ValueError, match="train and val positives"):
        retrieval_training.refit_on_train_val(small_config(), run_inputs(data, data["train"]), seed=3, epochs=1)
