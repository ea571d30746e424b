"""Hyper-parameters of the two-tower rating model and their choices (no TensorFlow: params validation reads them)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

HEAD_INPUTS = ("features", "towers")
OPTIMIZERS = ("adam", "adagrad", "sgd")


@dataclass
class RankingConfig:
    """Hyper-parameters of the two-tower rating model (params group `ranking`).

    Attributes:
        features: what is used beside the ids: groups ("user", "movie", "context"), single features
            (e.g. "genres", "hour"), or just ["ids"] for the ids-only model.
        embedding_dim: size of the user and movie vectors that meet in the dot product.
        side_dim: embedding size of each side feature (age group, city, genre, title word, ...).
        mlp_layers: hidden sizes of the head that reads [user, movie, user*movie, context].
        dropout: dropout in the head.
        head_on: what the MLP head reads beside the context: "features", the side-feature parts of
            the two tower outputs and their product, or "towers", the whole tower outputs (ids
            included) and their product. Measured on ml-1m-half: an MLP that sees the id part fits
            the residual with the random initial id vectors and keeps the dot product from
            learning (0.874-0.905 test RMSE against 0.862 with "features").
        l2: weight of the L2 penalty on the user and movie vectors of a batch (the looked-up rows,
            not the whole table, so rare users and movies are not shrunk by every batch they are
            absent from; the side-feature part of a vector is penalised with its id part).
        bias_l2: the same for the user and movie bias terms (weaker: a bias is one number).
        init_std: standard deviation of the initial embedding rows.
        id_learning_rate: per-example step of plain SGD for the user and movie id embeddings and
            biases (scaled by the batch size, so a batch moves a row as much as the per-example
            updates of classic matrix factorisation would); 0 trains them with `optimizer` too.
            Adam gives every row, however rare, the same step size, which lets rare users' rows
            overfit: measured on ml-1m-half, ids only, val RMSE 0.866 with Adam against 0.859
            with per-example SGD at 0.0025.
        optimizer, learning_rate: for everything else (side features, head), and for the ids
            when id_learning_rate is 0.
    """

    features: list[str] = field(default_factory=lambda: ["user", "movie", "context"])
    embedding_dim: int = 64
    side_dim: int = 16
    mlp_layers: list[int] = field(default_factory=lambda: [64, 32])
    dropout: float = 0.3
    l2: float = 0.05
    bias_l2: float = 0.001
    init_std: float = 0.05
    head_on: str = "features"
    id_learning_rate: float = 0.0025
    optimizer: str = "adam"
    learning_rate: float = 0.002
    batch_size: int = 4096
    max_epochs: int = 30
    patience: int = 2

    def __post_init__(self):
        if self.head_on not in HEAD_INPUTS:
            raise ValueError(f"ranking.head_on: {self.head_on!r} is not one of {list(HEAD_INPUTS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"ranking.optimizer: {self.optimizer!r} is not one of {list(OPTIMIZERS)}")

    def to_dict(self) -> dict:
        return asdict(self)
