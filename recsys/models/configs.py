"""The models' hyper-parameters as typed records, built from their params groups (no TensorFlow here).

params/default.yaml is the one place where a value and its default live, and `recsys.runs.params`
validates every value once; these records only give the groups names and types. They have no
defaults of their own (except fields added after models were saved with their configs, whose
defaults keep an older saved config loading as the model it was): build them with
`from_params(params["rating"])`, and a test that wants a smaller model replaces fields of the
default one (`dataclasses.replace`).
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

HEAD_INPUTS = ("features", "towers")
OPTIMIZERS = ("adam", "adagrad", "sgd")
SERVED_RETRIEVERS = ("two_tower", "sequential")  # what the serving stage retrieves with
# the two-tower retrieval model's negatives (`RetrievalConfig.negatives`); the first is the model before the choice
NEGATIVES = ("inbatch_logq", "mixed", "bpr_popular")
# the approximate index built beside exact search, saved and served (`RetrievalConfig.index`)
RETRIEVAL_INDEXES = ("scann", "faiss_hnsw", "faiss_ivf", "bruteforce")

_Config = TypeVar("_Config", bound="_FromParams")


class _FromParams:
    @classmethod
    def from_params(cls: type[_Config], group: dict[str, Any]) -> _Config:
        """The record of one params group (already validated by `recsys.runs.params.load_params`).

        A field with a default may be absent (a config saved before the field existed).

        Raises:
            KeyError: the group lacks a field or has one the record does not know (an out-of-date
                params file or a record that was not updated with params/default.yaml).
        """
        fields = dataclasses.fields(cls)
        required = {f.name for f in fields if f.default is f.default_factory is dataclasses.MISSING}
        names = [f.name for f in fields if f.name in group]
        missing, unknown = sorted(required - set(group)), sorted(set(group) - {f.name for f in fields})
        if missing or unknown:
            raise KeyError(
                f"{cls.__name__} needs exactly the keys of its params group: missing {missing}, unknown {unknown}"
            )
        return cls(**{name: group[name] for name in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RatingConfig(_FromParams):
    """Hyper-parameters of the two-tower rating model (params group `rating`).

    Attributes:
        features: what is used beside the ids: groups ("user", "movie", "context"), single features
            (e.g. "genres", "hour"), or just ["ids"] for the ids-only model.
        embedding_dim: size of the user and movie vectors that meet in the dot product.
        side_dim: embedding size of each side feature (age group, city, genre, title word, ...).
        head_on: what the head reads beside the context: "features", the side-feature parts of
            the two tower outputs and their product, or "towers", the whole tower outputs (ids
            included) and their product. A head that sees the id part fits the residual with the
            random initial id vectors and keeps the dot product from learning.
        mlp_layers: hidden sizes of the head; [] is a linear head.
        dropout: dropout after each hidden layer of the head.
        l2: weight of the L2 penalty on the user and movie vectors of a batch (the looked-up rows,
            not the whole table, so rare users and movies are not shrunk by every batch they are
            absent from; the side-feature part of a vector is penalised with its id part).
        bias_l2: the same for the user and movie bias terms.
        init_std: standard deviation of the initial id embedding rows.
        id_learning_rate: per-example step of plain SGD for the user and movie id embeddings and
            biases (scaled by the batch size, so a batch moves a row as much as the per-example
            updates of classic matrix factorisation would); 0 trains them with `optimizer` too.
            Adam gives every row, however rare, the same step size, which lets rare users' rows
            overfit.
        optimizer, learning_rate: for everything else (side features, head), and for the ids
            when id_learning_rate is 0.
        batch_size: examples per training step.
        max_epochs: the most epochs; early stopping on val RMSE ends sooner.
        patience: epochs without a better val RMSE before stopping.
        ablation: also fit the ids-only, + user and + movie variants (the feature ablation).
        val_grid: settings tried on val, {field: [values]}: each combination of the values replaces
            those fields (`grid_points`), is fitted on train and early-stopped on val; the lowest
            val RMSE is refit on train + val. A field with [] keeps the value above; an empty grid
            is this config alone.
        bootstrap: resamples of the test users behind the paired interval of the RMSE difference
            with the tuned SVD baseline.
    """

    features: list[str]
    embedding_dim: int
    side_dim: int
    head_on: str
    mlp_layers: list[int]
    dropout: float
    l2: float
    bias_l2: float
    init_std: float
    id_learning_rate: float
    optimizer: str
    learning_rate: float
    batch_size: int
    max_epochs: int
    patience: int
    ablation: bool
    # added after models were saved with their configs
    val_grid: dict[str, list] = dataclasses.field(default_factory=dict)
    bootstrap: int = 1000

    def __post_init__(self):
        fields = {f.name for f in dataclasses.fields(self)} - {"val_grid", "bootstrap", "ablation"}
        unknown = sorted(set(self.val_grid) - fields)
        if unknown:
            raise KeyError(
                f"rating.val_grid names {unknown}, which are not settings of the rating model: {sorted(fields)}"
            )

    def grid_points(self) -> list[RatingConfig]:
        """This config with each combination of `val_grid`'s values, in the grid's key order (the last
        key varies fastest); each point has an empty grid. No values to try: [this config without its grid]."""
        varied = {name: values for name, values in self.val_grid.items() if values}
        combinations = itertools.product(*varied.values())
        return [dataclasses.replace(self, val_grid={}, **dict(zip(varied, values))) for values in combinations]


@dataclass
class InBatchSoftmaxConfig(_FromParams):
    """The training both retrievers share: an in-batch softmax, early-stopped on val Recall@100.

    Attributes:
        temperature: divides the logits of the in-batch softmax (lower = sharper).
        logq_correction: subtract log(sampling probability) of each in-batch candidate from its
            logit. In-batch negatives are drawn in proportion to popularity, so without the
            correction popular movies are over-penalised as negatives (Yi et al., RecSys 2019).
        remove_accidental_hits: do not count as a negative a candidate that is the same movie as
            the row's positive (two users in one batch who watched the same movie).
        learning_rate: Adam's step size.
        batch_size: training examples per step; their positives are the in-batch candidates.
        epochs: the most training epochs; early stopping on val Recall@100 picks the epoch.
        patience: epochs without a better val Recall@100 before stopping.
    """

    temperature: float
    logq_correction: bool
    remove_accidental_hits: bool
    learning_rate: float
    batch_size: int
    epochs: int
    patience: int


@dataclass
class RetrievalConfig(InBatchSoftmaxConfig):
    """Hyper-parameters of the two-tower retrieval model (params group `retrieval`), beside `InBatchSoftmaxConfig`'s.

    Attributes:
        model: the retriever the serving stage uses: "two_tower" (this model) or "sequential"
            (`SequentialConfig`); both are trained and evaluated side by side.
        features: what the towers use beside the ids: groups ("user", "movie", "context"), single
            features (e.g. "genres"), or ["ids"]. User and movie features learn faster than ids
            alone and give a vector to a movie without training ratings (cold start). Context
            (hour, weekday, month) only enters the query tower during training: the full-ranking
            protocol asks for one list per user, not per moment, so evaluation and the indexes
            query without it.
        embedding_dim: size of the query and candidate vectors.
        side_dim: embedding size of each side feature.
        init_std: standard deviation of the initial id embedding rows.
        l2_normalize: score by cosine instead of raw dot product. Without it, popular movies grow
            long vectors and win every list; with it, `temperature` sets how peaked the softmax is.
        min_rating: ratings below it are not positives (1 keeps every rating: for retrieval a
            watched movie is a positive whatever the rating).
        lazy_adam: update only the embedding rows a batch looks up (`recsys.models.lazy_adam.LazyAdam`)
            instead of Adam's decay of every row at every step, whose cost grows with the tables.
        negatives: what each positive is contrasted with in training (`NEGATIVES`):
            "inbatch_logq", the other positives of the batch in a softmax with logQ correction (the
            TFRS/YouTube line); "mixed", those plus `uniform_negatives` movies drawn uniformly from
            the catalogue per batch (mixed negative sampling, Yang et al. WWW 2020), the softmax
            corrected by each movie's probability under the mixture; "bpr_popular", BPR's pairwise
            loss (Rendle et al. 2009) against `bpr_negatives` movies per positive drawn in
            proportion to count ** `bpr_alpha` (no logQ correction, and a drawn negative that is
            the positive's own movie is always masked). The params group may name a list of them, trained
            side by side and chosen on val (`variants`); `from_params` takes the first.
        uniform_negatives: M, the catalogue movies drawn uniformly per batch ("mixed"): one pass
            of the candidate tower over M movies per step.
        bpr_negatives: K, the negatives of each positive ("bpr_popular").
        bpr_alpha: the popularity exponent of the BPR negatives: 1 draws movies as often as they
            are watched (the in-batch negatives' distribution), 0 uniformly over the watched
            movies; 0.75 (word2vec's unigram ** 3/4) keeps them harder than uniform without
            making almost every negative a blockbuster (BPR has no logQ correction).
        index: the index built beside exact search over the movie vectors, saved and served
            (`RETRIEVAL_INDEXES`): ScaNN, FAISS HNSW or IVF (inner product; settings in the
            `faiss` group), or exact search itself ("bruteforce").
        popularity_prior_grid: the weights beta of a popularity prior scored on val after training
            (`retrieval_training.choose_popularity_prior`): a movie's score becomes cosine / temperature
            + beta * log(its share of the training positives). Cosine over a temperature spans a few
            nats, less than movies' log-popularity, and logQ correction trains the scores without
            popularity; beta gives some of it back. The served model takes the best val Recall@100
            (its job: candidates), a top-10 list the best val Recall@10. The prior rides in the
            vectors (one more dimension), so indexes search it as they search the rest. [0.0] keeps
            the model's scores as trained.
    """

    model: str
    features: list[str]
    embedding_dim: int
    side_dim: int
    init_std: float
    l2_normalize: bool
    min_rating: int
    lazy_adam: bool
    negatives: str = "inbatch_logq"
    uniform_negatives: int = 256
    bpr_negatives: int = 8
    bpr_alpha: float = 0.75
    index: str = "scann"
    popularity_prior_grid: list[float] = dataclasses.field(default_factory=lambda: [0.0])

    def __post_init__(self):
        check_negatives(self.negatives)
        if not self.popularity_prior_grid or min(self.popularity_prior_grid) < 0:
            raise ValueError(
                f"retrieval.popularity_prior_grid must be a non-empty list of weights >= 0, got {self.popularity_prior_grid}"
            )
        if self.uniform_negatives < 1 or self.bpr_negatives < 1 or self.bpr_alpha < 0:
            raise ValueError(
                "retrieval.uniform_negatives and retrieval.bpr_negatives must be >= 1 and retrieval.bpr_alpha >= 0, "
                f"got {self.uniform_negatives}, {self.bpr_negatives}, {self.bpr_alpha}"
            )

    @classmethod
    def from_params(cls, group: dict[str, Any]) -> RetrievalConfig:
        """The record of the `retrieval` group; `negatives` may be one variant or a list of them (the first is taken).

        Raises:
            ValueError: a variant that is not one of `NEGATIVES`, or an empty list.
            KeyError: as `_FromParams.from_params`.
        """
        if "negatives" not in group:
            return super().from_params(group)
        return super().from_params({**group, "negatives": negative_variants(group["negatives"])[0]})

    @classmethod
    def variants(cls, group: dict[str, Any]) -> dict[str, RetrievalConfig]:
        """One config per variant the group's `negatives` names (a string or a list), in its order.

        Each is the group's config with `negatives` set to that variant: the models trained side by
        side and chosen on val Recall@100.
        """
        base = cls.from_params(group)
        return {name: dataclasses.replace(base, negatives=name) for name in negative_variants(group.get("negatives"))}


def check_negatives(name: Any) -> str:
    """`name` if it is one of `NEGATIVES`, else a ValueError listing them."""
    if name not in NEGATIVES:
        raise ValueError(f"retrieval.negatives: {name!r} is not a variant; valid ones are {', '.join(NEGATIVES)}")
    return name


def negative_variants(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """The variants a `retrieval.negatives` value names: one string, or a list of distinct ones (None: the default).

    Raises:
        ValueError: an unknown variant (the valid ones listed), a repeated one, or an empty list.
    """
    names = [NEGATIVES[0]] if value is None else [value] if isinstance(value, str) else list(value)
    if not names:
        raise ValueError(f"retrieval.negatives is an empty list: name at least one of {', '.join(NEGATIVES)}")
    if len(set(names)) < len(names):
        raise ValueError(f"retrieval.negatives names a variant twice: {names}")
    return [check_negatives(name) for name in names]


@dataclass
class SequentialConfig(InBatchSoftmaxConfig):
    """Hyper-parameters of the sequential retriever (params group `sequential`), beside `InBatchSoftmaxConfig`'s.

    Its batch is a number of windows (each holds up to S targets: the in-batch candidates), and
    its queries and movies are always L2-normalised.

    Attributes:
        history_length: N, the user's most recent movies a query reads (served and evaluated).
        window_targets: S, next-movie targets per training window. A user's training sequence
            is cut, from its end, into windows of N + S movies that overlap by N: every movie but
            the user's first is a trained slot once, read with the movies before it (at least N
            of them, or all the user has; up to N + S - 1 within a window, while a served query
            reads N). One GRU pass over a window trains S slots (the per-target alternative was
            about 5 times slower).
        target_horizon: H, how far ahead a training target may lie: each trained slot's target is
            drawn (anew every step) from the H movies that follow it; 1 is the next movie. A
            horizon asks the query for the user's coming movies, not only the next one, which is
            what the held-out movies of a temporal split and of a fold-in user are.
        embedding_dim: size of the movie embeddings and of the query (the GRU's output, projected).
        max_windows_per_user: the most windows a user trains per epoch, their latest (0: all of
            them). On ML-25M a heavy rater holds thousands of windows; an epoch over every window
            of 20M ratings takes about 17 minutes on two cores.
    """

    history_length: int
    window_targets: int
    target_horizon: int
    embedding_dim: int
    max_windows_per_user: int
