"""DCN-v2's cross layers read as feature-pair importance: the block mapping, both layer kinds, the agreement with gain."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.ranking.cross_importance import (
    CrossImportance,
    ImportanceAgreement,
    _ordinal,
    cross_pairs,
    feature_totals,
    pair_importance,
)

COLUMNS = {"a": slice(0, 1), "b": slice(1, 3), "c": slice(3, 4)}  # b: a 2-column embedding


def hand_made_weights() -> np.ndarray:
    """W (output x input) with three known blocks: (b, a) of norm 5, (a, c) = 2, (c, c) = 1."""
    weights = np.zeros((4, 4))
    weights[1:3, 0] = [3.0, 4.0]  # a's input column lands on b's output columns
    weights[0, 3] = 2.0  # c's input lands on a's output column
    weights[3, 3] = 1.0
    return weights


def test_pair_importance_maps_w_blocks_to_output_rows_and_input_columns():
    pairs = pair_importance(hand_made_weights(), COLUMNS)
    assert list(pairs.index) == list(pairs.columns) == ["a", "b", "c"]
    expected = np.array([[0.0, 0.0, 2.0], [5.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(pairs.to_numpy(), expected)  # transposed, (a, b) would be 5 and (b, a) 0
    # scales: output side of a = 2, of c = 0.5; input side of c = 3
    scaled = pair_importance(hand_made_weights(), COLUMNS, np.array([2.0, 1, 1, 0.5]), np.array([1.0, 1, 1, 3]))
    np.testing.assert_allclose(scaled.to_numpy(), [[0.0, 0.0, 12.0], [5.0, 0.0, 0.0], [0.0, 0.0, 1.5]])
    with pytest.raises(ValueError, match="cover 3 of 4"):
        pair_importance(hand_made_weights(), {"a": slice(0, 1), "b": slice(1, 3)})


def test_feature_totals_and_unordered_pairs_of_the_hand_made_blocks():
    pairs = pair_importance(hand_made_weights(), COLUMNS)
    totals = feature_totals(pairs)  # every weight touching the feature on either side, its own block once
    assert list(totals.index) == ["a", "b", "c"]
    np.testing.assert_allclose(totals.to_numpy(), [np.sqrt(25 + 4), 5.0, np.sqrt(4 + 1)])
    joined = cross_pairs(pairs)
    assert joined.index.tolist() == ["a x b", "a x c", "b x c"]
    np.testing.assert_allclose(joined.to_numpy(), [5.0, 2.0, 0.0])


@pytest.mark.parametrize("projection_dim", [None, 2])
@pytest.mark.parametrize("diag_scale", [0.0, 0.5])
def test_layer_weights_reproduce_full_and_low_rank_cross_layers(projection_dim, diag_scale):
    import tensorflow_recommenders as tfrs

    from recsys.ranking.cross_importance import layer_weights

    rng = np.random.default_rng(0)
    x0, x = (rng.normal(size=(5, 6)).astype(np.float32) for _ in range(2))
    layer = tfrs.layers.dcn.Cross(projection_dim=projection_dim, diag_scale=diag_scale)
    layer(x0, x)
    for variable in layer.weights:  # a random bias too, and no symmetric kernel by chance
        variable.assign(rng.normal(size=variable.shape).astype(np.float32))
    weights, bias = layer_weights(layer)
    assert weights.shape == (6, 6) and bias.shape == (6,)
    np.testing.assert_allclose(layer(x0, x).numpy(), x0 * (x @ weights.T + bias) + x, rtol=1e-4, atol=1e-5)
    if projection_dim:
        assert np.linalg.matrix_rank(weights - diag_scale * np.eye(6), tol=1e-4) == projection_dim  # float32 U @ V


def test_x0_columns_put_numeric_features_first_then_each_embedding():
    from recsys.ranking.dcn_ranker import DCNRanker

    ranker = DCNRanker(["gender", "retrieval_score", "occupation", "year"], {"embedding_dim": 3}, seed=0)
    assert ranker.x0_columns() == {
        "gender": slice(2, 5),
        "retrieval_score": slice(0, 1),
        "occupation": slice(5, 8),
        "year": slice(1, 2),
    }


def synthetic(n_users: int, width: int = 10, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Candidate lists whose relevance follows retrieval_score; two demographic codes beside it."""
    rng = np.random.default_rng(seed)
    n = n_users * width
    features = pd.DataFrame(
        {
            "retrieval_score": rng.normal(size=n),
            "gender": rng.integers(1, 3, n),
            "retrieval_rank": rng.normal(size=n),
            "occupation": rng.integers(0, 21, n),
        }
    ).astype(np.float32)
    labels = (features["retrieval_score"] + 0.3 * rng.normal(size=n) > 1.0).to_numpy(np.float32)
    return features, labels, np.full(n_users, width)


@pytest.fixture(scope="module")
def trained():
    from recsys.ranking.dcn_ranker import DCNRanker
    from recsys.runs.params import load_params

    params = {**load_params()["ranker"]["dcn"], "max_epochs": 2, "cross_layers": 2}
    X, y, groups = synthetic(80)
    X_valid, y_valid, groups_valid = synthetic(20, seed=1)
    ranker = DCNRanker(list(X.columns), params, seed=3).fit(X, y, groups, X_valid, y_valid, groups_valid)
    return ranker, X


def test_a_trained_ranker_gives_a_labelled_feature_by_feature_matrix(trained):
    from recsys.ranking.cross_importance import cross_weights, dcn_pair_importance

    ranker, X = trained
    width = 2 + 2 * ranker.params["embedding_dim"]
    assert [w.shape for w, _ in cross_weights(ranker)] == [(width, width)] * 2
    for pairs in (dcn_pair_importance(ranker), dcn_pair_importance(ranker, X), dcn_pair_importance(ranker, X, 1)):
        assert list(pairs.index) == list(pairs.columns) == list(X.columns)
        assert np.isfinite(pairs.to_numpy()).all() and (pairs.to_numpy() >= 0).all()
    with pytest.raises(ValueError, match="2 cross layers"):
        dcn_pair_importance(ranker, X, layer=2)


def test_x0_and_the_cross_weights_reproduce_the_scorer(trained):
    """x0's layout and W's orientation are the scorer's: the numpy cross stack + its deep tower give predict's scores."""
    from recsys.ranking.cross_importance import cross_inputs

    ranker, X = trained
    xs = cross_inputs(ranker, X)
    assert len(xs) == 3 and len(cross_inputs(ranker, X, max_rows=100)[0]) <= 100
    hidden = xs[-1]
    for dense in ranker.model.deep:
        hidden = dense(hidden)
    scores = ranker.model.out(hidden).numpy()[:, 0]
    np.testing.assert_allclose(scores, ranker.predict(X), rtol=1e-4, atol=1e-4)


def test_cross_importance_of_a_trained_ranker_gives_metrics_sentences_and_a_figure(trained):
    import matplotlib.pyplot as plt

    ranker, X = trained
    gain = pd.Series([10.0, 0.0, 1.0, 2.0], index=X.columns)
    crosses = CrossImportance.of(ranker, gain, X)
    metrics = crosses.metrics()
    assert set(metrics) == {"dcn_lightgbm_importance_spearman", "dcn_lightgbm_top5_overlap", "dcn_top_cross_pair"}
    assert metrics["dcn_top_cross_pair"] == cross_pairs(crosses.pairs).index[0]
    assert metrics["dcn_top_cross_pair"].count(" x ") == 1 and -1 <= metrics["dcn_lightgbm_importance_spearman"] <= 1
    assert crosses.describe().startswith("DCN-v2's cross weights and LightGBM's gain rank the 4 features")
    fig = crosses.figure()
    assert [label.get_text() for label in fig.axes[0].get_yticklabels()] == list(X.columns)
    plt.close(fig)


FEATURES = list("abcdefgh")


def test_agreement_ranks_most_important_first_and_finds_the_moved_feature():
    dcn = pd.Series(np.arange(8, 0, -1.0), index=FEATURES)  # a most important, h least
    gain = pd.Series([8.0, 0.5, 7, 6, 5, 4, 3, 2], index=FEATURES)  # the same, but b last
    agreement = ImportanceAgreement.of(dcn, gain)
    assert agreement.top_features("dcn") == ["a", "b", "c", "d", "e"]
    assert agreement.top_features("lightgbm") == ["a", "c", "d", "e", "f"]
    assert agreement.shared_top == ["a", "c", "d", "e"]
    assert agreement.table.loc["b", ["dcn_rank", "lightgbm_rank", "rank_difference"]].tolist() == [2, 8, -6]
    # Spearman by hand: rank differences 0, -6 and six of +-1: 1 - 6 * 42 / (8 * 63)
    assert agreement.spearman == pytest.approx(0.5)
    text = agreement.describe()
    assert "rank the 8 features partly alike (Spearman +0.50" in text
    assert "4 of their top 5 are the same (a, c, d, e)." in text
    assert text.endswith("They disagree most on b (DCN-v2 2nd, LightGBM 8th).")


def test_agreement_sentences_follow_the_numbers_at_both_ends():
    dcn = pd.Series(np.arange(6, 0, -1.0), index=list("abcdef"))
    same = ImportanceAgreement.of(dcn, dcn * 10)
    assert same.spearman == pytest.approx(1.0)
    assert "much alike (Spearman +1.00" in same.describe() and "5 of their top 5" in same.describe()
    assert same.describe().endswith("No feature's rank differs by more than one place.")
    reversed_ = ImportanceAgreement.of(dcn, dcn.iloc[::-1].set_axis(dcn.index))
    assert reversed_.spearman == pytest.approx(-1.0)
    assert "in largely opposite orders (Spearman -1.00" in reversed_.describe()
    assert reversed_.describe().endswith(
        "They disagree most on f (DCN-v2 6th, LightGBM 1st) and a (DCN-v2 1st, LightGBM 6th)."
    )
    flat = ImportanceAgreement.of(dcn, pd.Series(1.0, index=dcn.index))
    assert np.isnan(flat.spearman) and "LightGBM gives all 6 features the same importance" in flat.describe()
    with pytest.raises(ValueError, match="only LightGBM \\['z'\\]"):
        ImportanceAgreement.of(dcn, dcn.rename({"a": "z"}))


def test_ordinals():
    assert [_ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 103)] == [
        "1st",
        "2nd",
        "3rd",
        "4th",
        "11th",
        "12th",
        "13th",
        "21st",
        "22nd",
        "103rd",
    ]
