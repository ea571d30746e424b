"""The two-tower refit on train + val (retrieval_training.refit_on_train_val): the given epochs, no early stopping."""

from __future__ import annotations

import pytest

from recsys.training import retrieval_training
from tests.retrieval.test_retrieval import data, small_config  # noqa: F401  (the tiny taste data, a module fixture)


def test_the_refit_learns_from_train_and_val_for_exactly_the_given_epochs(data):  # noqa: F811
    positives, config = data["interactions"], small_config(epochs=15, patience=1)
    tables = (data["encoder"], positives, data["user_table"], data["movie_table"])
    refit = retrieval_training.refit_on_train_val(config, *tables, seed=3, epochs=3)
    assert len(refit.history["loss"]) == 3 and "val_recall_at_100" not in refit.history  # no monitor, no stopping
    before_test = positives[positives["split"] != "test"]
    assert refit.n_positives == len(before_test) > len(data["train"])
    direct = retrieval_training.train_retrieval_model(
        config, data["encoder"], before_test, data["user_table"], data["movie_table"], seed=3, epochs=3
    )
    assert refit.history["loss"] == direct.history["loss"]  # the same fresh model, seed and examples


def test_the_refit_refuses_no_epochs_and_a_split_without_val(data):  # noqa: F811
    tables = (data["encoder"], data["interactions"], data["user_table"], data["movie_table"])
    with pytest.raises(ValueError, match="at least one epoch"):
        retrieval_training.refit_on_train_val(small_config(), *tables, seed=3, epochs=0)
    train_only = (data["encoder"], data["train"], data["user_table"], data["movie_table"])
    with pytest.raises(ValueError, match="train and val positives"):
        retrieval_training.refit_on_train_val(small_config(), *train_only, seed=3, epochs=1)
