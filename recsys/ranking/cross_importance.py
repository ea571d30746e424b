"""What DCN-v2's cross layers learned: feature-pair importance from their weight matrices, beside LightGBM's gain.

A TFRS cross layer computes x_next = x0 * (W x + b) + x (x = x0 in the first layer). Its W is
indexed by x0's columns, and each feature owns a block of them (`DCNRanker.x0_columns`: one
column per numeric feature, `embedding_dim` per categorical one). Convention here, as in the
DCN-v2 paper (Wang et al. 2021, its learned weight matrix figure): W is (output x input), so
block (a, b) of W holds the weights that multiply feature b's columns of x and land on feature
a's columns, where they are multiplied by x0's feature a. Keras' Dense keeps its kernel as
(input x output) and computes x @ kernel, so W = kernel.T; the TFRS DCN tutorial's `visualize`
draws the kernel's blocks, i.e. this matrix transposed. A pair's importance is the Frobenius
norm of its block (`pair_importance`). In the first layer both factors are x0, so block (a, b)
and block (b, a) both weigh the product of features a and b (`cross_pairs` joins them). In a
deeper layer, x is the previous layer's output, whose columns of feature b already carry b's
crosses with every feature: its blocks are higher-order crosses, not pairs. The figure, the
sentences and the metrics read the first layer, as the tutorial does; `pair_importance` reads
any layer for inspection.

Raw weights compare blocks of different sizes and inputs of different scales (standardised
numeric columns against small embedding values), so given candidate rows the blocks are of
diag(s_out) W diag(s_in), s the root mean square of each column of x0 (output side) and of the
layer's input x (input side) over the rows: the size of each pair's term in the layer's output.
(Raw, the three demographic embeddings of an untrained scorer already lead the ranking, from
their 4 x 4 blocks alone; scaled, a planted cross of two numeric features comes first.) A cross
layer holds crosses, not main effects (those pass through its "+ x" and the deep tower): a
feature that acts alone can rank low here and high in LightGBM's gain.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from recsys.ranking.dcn_ranker import DCNRanker


def layer_weights(layer) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) of one built `tfrs.layers.dcn.Cross` layer, W (output x input): the layer is x0 * (W x + b) + x.

    Full rank (projection_dim None): W = kernel.T of its Dense `_dense`. Low rank: x @ U @ V, so
    W = (U @ V).T of `_dense_u` and `_dense_v`. A diag_scale adds diag_scale * I to W.

    Raises:
        ValueError: the layer is not built (call the model once), or has a preactivation (W x + b
            then passes through a nonlinearity, which a weight matrix does not describe).
    """
    if not layer.built:
        raise ValueError("the Cross layer is not built: call the model once (fit or load the ranker) first")
    if getattr(layer._preactivation, "__name__", "linear") != "linear":
        raise ValueError("Cross layers with a preactivation are not read: W x + b passes through a nonlinearity")
    if layer._projection_dim is None:
        kernel, bias_of = layer._dense.kernel.numpy(), layer._dense
    else:
        kernel, bias_of = layer._dense_u.kernel.numpy() @ layer._dense_v.kernel.numpy(), layer._dense_v
    weights = kernel.T + (layer._diag_scale or 0.0) * np.eye(len(kernel), dtype=kernel.dtype)
    bias = bias_of.bias.numpy() if bias_of.use_bias else np.zeros(len(kernel), kernel.dtype)
    return weights, bias


def cross_weights(ranker: DCNRanker) -> list[tuple[np.ndarray, np.ndarray]]:
    """(W, b) of each of the ranker's cross layers, first first (`layer_weights`)."""
    if ranker.model is None:
        raise RuntimeError("cross_weights needs a fitted (or loaded) DCNRanker")
    return [layer_weights(layer) for layer in ranker.model.crosses]


def cross_inputs(ranker: DCNRanker, X: pd.DataFrame, max_rows: int = 200_000) -> list[np.ndarray]:
    """[x0, x1, ..., xL] of candidate rows: x0, each cross layer's output (xl is layer l's input; xL the stack's).

    Computed in numpy from `cross_weights`; at most `max_rows` evenly spaced rows of X (the root
    mean squares it serves are stable long before; it keeps the cost under a second at any size).
    """
    rows = X.iloc[:: max(1, -(-len(X) // max_rows))]
    xs = [ranker.x0(rows)]
    for weights, bias in cross_weights(ranker):
        xs.append(xs[0] * (xs[-1] @ weights.T + bias) + xs[-1])
    return xs


def pair_importance(
    weights: np.ndarray,
    columns: Mapping[str, slice],
    scale_out: np.ndarray | None = None,
    scale_in: np.ndarray | None = None,
) -> pd.DataFrame:
    """Feature x feature Frobenius norms of W's blocks: row a, column b = ||W[a's columns, b's columns]||.

    Rows are the output side (the x0 factor), columns the input side (the crossed x).

    Args:
        weights: W, (output x input), as `layer_weights` gives it.
        columns: feature -> its columns of x0 (`DCNRanker.x0_columns`); rows and columns follow its order.
        scale_out, scale_in: per-column scales; the blocks are then of diag(scale_out) W diag(scale_in).
    """
    weights = np.asarray(weights, np.float64)
    width = weights.shape[1]
    owner = np.full(width, -1)
    for index, span in enumerate(columns.values()):
        owner[span] = index
    if weights.shape != (width, width) or (owner < 0).any():
        raise ValueError(
            f"W is {weights.shape} but the features' columns cover {int((owner >= 0).sum())} of {width}: "
            "pass the x0 columns of the ranker whose layer W comes from (DCNRanker.x0_columns)"
        )
    if scale_out is not None:
        weights = weights * np.asarray(scale_out, np.float64)[:, None]
    if scale_in is not None:
        weights = weights * np.asarray(scale_in, np.float64)[None, :]
    member = np.eye(len(columns))[owner]  # (columns, features): which feature owns each column
    norms = np.sqrt(member.T @ np.square(weights) @ member)
    return pd.DataFrame(norms, index=list(columns), columns=list(columns))


def dcn_pair_importance(ranker: DCNRanker, X: pd.DataFrame | None = None, layer: int = 0) -> pd.DataFrame:
    """The feature-pair importance of one cross layer of a fitted DCNRanker (`pair_importance`).

    Args:
        X: candidate rows (e.g. those it was trained on); given, W is scaled by the root mean square of
            x0's columns (output side) and of the layer's input (input side) over them; None: the raw
            weights, as the DCN-v2 paper and the TFRS tutorial draw them.
        layer: which cross layer (0 = the first: pairs of input features).
    """
    layers = cross_weights(ranker)
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer {layer} does not exist: the ranker has {len(layers)} cross layers (0-based)")
    weights, _ = layers[layer]
    if X is None:
        return pair_importance(weights, ranker.x0_columns())
    xs = cross_inputs(ranker, X)
    rms = [np.sqrt(np.mean(np.square(x, dtype=np.float64), axis=0)) for x in (xs[0], xs[layer])]
    return pair_importance(weights, ranker.x0_columns(), *rms)


def feature_totals(pairs: pd.DataFrame) -> pd.Series:
    """Per feature, the norm of every block of its row or column (its own block once), largest first.

    The Frobenius norm of all of W's weights that touch the feature's columns on either side.
    """
    squares = np.square(pairs.to_numpy())
    totals = np.sqrt(squares.sum(axis=0) + squares.sum(axis=1) - np.diag(squares))
    return pd.Series(totals, index=pairs.index, name="dcn_cross_norm").sort_values(ascending=False)


def cross_pairs(pairs: pd.DataFrame) -> pd.Series:
    """Each pair of distinct features "a x b" (a listed first in `pairs`), sqrt(M[a, b]² + M[b, a]²), largest first."""
    first, second = np.triu_indices(len(pairs), k=1)
    values = np.hypot(pairs.to_numpy()[first, second], pairs.to_numpy()[second, first])
    names = [f"{pairs.index[a]} x {pairs.index[b]}" for a, b in zip(first, second)]
    return pd.Series(values, index=names, name="cross_norm").sort_values(ascending=False)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _p_text(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def _likeness(rho: float) -> str:
    """How alike two rankings are, in words, from their Spearman correlation."""
    bounds = ((0.7, "much alike"), (0.4, "partly alike"), (0.1, "only weakly alike"), (-0.1, "in unrelated orders"))
    return next((words for bound, words in bounds if rho >= bound), "in largely opposite orders")


@dataclass
class ImportanceAgreement:
    """How DCN-v2's per-feature cross norms and LightGBM's per-feature gain rank the same features.

    Attributes:
        table: per feature (LightGBM's order): dcn, lightgbm (the importances), dcn_rank,
            lightgbm_rank (1 = most important; ties share the best rank), rank_difference (dcn - lightgbm).
        spearman, p_value: Spearman's rank correlation of the two importances (scipy), NaN when one is constant.
        top: the length of the top lists compared.
    """

    table: pd.DataFrame
    spearman: float
    p_value: float
    top: int = 5

    @classmethod
    def of(cls, dcn: pd.Series, gain: pd.Series, top: int = 5) -> ImportanceAgreement:
        """The agreement of two per-feature importances over the same features (higher = more important).

        Raises:
            ValueError: the two name different features.
        """
        from scipy.stats import spearmanr

        if set(dcn.index) != set(gain.index):
            raise ValueError(
                f"the importances name different features: only DCN-v2 {sorted(set(dcn.index) - set(gain.index))}, "
                f"only LightGBM {sorted(set(gain.index) - set(dcn.index))}; compare rankers trained on one feature list"
            )
        table = pd.DataFrame({"dcn": dcn, "lightgbm": gain.reindex(dcn.index)}).astype(float)
        for name in ("dcn", "lightgbm"):
            table[f"{name}_rank"] = table[name].rank(ascending=False, method="min").astype(int)
        table["rank_difference"] = table["dcn_rank"] - table["lightgbm_rank"]
        table = table.sort_values(["lightgbm_rank", "dcn_rank"])
        constant = table["dcn"].nunique() < 2 or table["lightgbm"].nunique() < 2
        rho, p = (np.nan, np.nan) if constant else spearmanr(table["dcn"], table["lightgbm"])
        return cls(table, float(rho), float(p), top)

    def top_features(self, name: str) -> list[str]:
        """The `top` features of one side ("dcn" or "lightgbm"), most important first."""
        return self.table.sort_values(f"{name}_rank", kind="stable").index[: self.top].tolist()

    @property
    def shared_top(self) -> list[str]:
        """The features in both top lists, in LightGBM's order."""
        dcn = set(self.top_features("dcn"))
        return [name for name in self.top_features("lightgbm") if name in dcn]

    def disagreements(self, n: int = 2) -> pd.DataFrame:
        """The n features whose ranks differ most (at least 2 places), largest difference first."""
        far = self.table[self.table["rank_difference"].abs() >= 2]
        order = far["rank_difference"].abs().sort_values(ascending=False, kind="stable")
        return far.loc[order.index[:n]]

    def describe(self) -> str:
        """Two sentences, from the numbers: how alike the rankings are and the shared top, then the largest splits."""
        n, top = len(self.table), min(self.top, len(self.table))
        if np.isnan(self.spearman):
            flat = "DCN-v2" if self.table["dcn"].nunique() < 2 else "LightGBM"
            return f"The rankings cannot be compared: {flat} gives all {n} features the same importance."
        shared = self.shared_top
        named = f" ({', '.join(shared)})" if shared else ""
        first = (
            f"DCN-v2's cross weights and LightGBM's gain rank the {n} features {_likeness(self.spearman)} "
            f"(Spearman {self.spearman:+.2f}, {_p_text(self.p_value)}); {len(shared)} of their top {top} "
            f"are the same{named}."
        )
        far = self.disagreements()
        if far.empty:
            return f"{first} No feature's rank differs by more than one place."
        parts = [
            f"{name} (DCN-v2 {_ordinal(int(row.dcn_rank))}, LightGBM {_ordinal(int(row.lightgbm_rank))})"
            for name, row in far.iterrows()
        ]
        return f"{first} They disagree most on {' and '.join(parts)}."


@dataclass
class CrossImportance:
    """DCN-v2's first cross layer read as feature-pair importance, and its agreement with LightGBM's gain.

    Attributes:
        pairs: feature x feature block norms of the first layer (`dcn_pair_importance`).
        gain: LightGBM's gain per feature (`LambdaRankRanker.importance`).
        agreement: the per-feature comparison (`ImportanceAgreement`).
        scaled: whether the weights were scaled by the inputs' root mean squares.
    """

    pairs: pd.DataFrame
    gain: pd.Series
    agreement: ImportanceAgreement
    scaled: bool

    @classmethod
    def of(cls, ranker: DCNRanker, gain: pd.Series, X: pd.DataFrame | None = None, top: int = 5) -> CrossImportance:
        """Read the ranker's first cross layer (scaled by X's inputs when given) and compare it with `gain`."""
        pairs = dcn_pair_importance(ranker, X)
        return cls(pairs, gain, ImportanceAgreement.of(feature_totals(pairs), gain, top), X is not None)

    def describe(self) -> str:
        """What the two agree and disagree on (`ImportanceAgreement.describe`)."""
        return self.agreement.describe()

    def metrics(self) -> dict[str, Any]:
        """dcn_lightgbm_importance_spearman, dcn_lightgbm_top<k>_overlap, dcn_top_cross_pair ("a x b")."""
        return {
            "dcn_lightgbm_importance_spearman": self.agreement.spearman,
            f"dcn_lightgbm_top{self.agreement.top}_overlap": len(self.agreement.shared_top),
            "dcn_top_cross_pair": cross_pairs(self.pairs).index[0],
        }

    def figure(self) -> Any:
        """The first layer's pair heatmap (features labelled) beside both rankers' per-feature shares."""
        import matplotlib.pyplot as plt

        names = list(self.pairs.index)
        fig, axes = plt.subplots(1, 2, figsize=(15, 6), gridspec_kw={"width_ratios": [1.15, 1]})
        image = axes[0].imshow(self.pairs.to_numpy(), cmap="viridis")
        axes[0].set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        axes[0].set_yticks(range(len(names)), names, fontsize=8)
        what = "scaled by the inputs' RMS" if self.scaled else "raw weights"
        axes[0].set(
            title=f"DCN-v2 first cross layer: ||W block|| ({what})\nstrongest pair: {cross_pairs(self.pairs).index[0]}",
            xlabel="crossed input x (W's column block)",
            ylabel="x0 factor (W's row block)",
        )
        fig.colorbar(image, ax=axes[0], fraction=0.046, pad=0.04)
        totals = self.agreement.table[["lightgbm", "dcn"]]
        shares = (totals / totals.sum()).rename(columns={"lightgbm": "LightGBM gain", "dcn": "DCN-v2 cross norm"})
        shares.iloc[::-1].plot.barh(ax=axes[1], color=["#4C72B0", "#DD8452"], width=0.8)
        axes[1].set(title=f"Per feature (share of the sum); Spearman {self.agreement.spearman:+.2f}", xlabel="share")
        fig.tight_layout()
        return fig
