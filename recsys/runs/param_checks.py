"""The parameters' values checked beyond their types: ranges, choices and combinations, each naming the key.

`recsys.runs.params` checks that every value has its default's type, then calls `validate` here,
before any notebook runs; a check returns an error text (how the value is wrong) or None.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any


class ParamsError(ValueError):
    """A parameter file or override that cannot be used; the message names the key and how to fix it."""


# ---- value checks beyond types: each returns an error text or None ---------------------------


def _one_of(*choices: Any) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"must be one of {', '.join(map(str, choices))}"


def _at_least(low: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= low else f"must be >= {low}"


def _share(v: float) -> str | None:
    return None if 0.0 <= v < 1.0 else "must be a share in [0, 1)"


def _non_empty(v: list) -> str | None:
    return None if v else "must not be empty"


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be > 0"


def _grid(item_check: Callable[[Any], str | None], may_be_empty: bool = False) -> Callable[[list], str | None]:
    """A list (non-empty unless `may_be_empty`) whose every item passes `item_check`."""

    def check(values: list) -> str | None:
        if not values:
            return None if may_be_empty else "must not be empty"
        problems = [f"item {i} ({v!r}) {item_check(v)}" for i, v in enumerate(values) if item_check(v)]
        return "; ".join(problems) or None

    return check


def _distinct(item_check: Callable[[Any], str | None]) -> Callable[[list], str | None]:
    """A `_grid` whose items are all different (each names a model trained side by side)."""
    grid = _grid(item_check)

    def check(values: list) -> str | None:
        return grid(values) or (None if len(set(values)) == len(values) else "names an item twice")

    return check


def _features(v: list) -> str | None:
    from recsys.features.encoding import resolve_features

    try:
        resolve_features(v)
    except ValueError as err:
        return str(err)
    return None


def _hidden_models(v: list) -> str | None:
    known = ("ease", "puresvd")  # recsys.exploration.hidden_preferences.HIDDEN_MODELS (a later layer)
    if not v or len(set(v)) != len(v) or not set(v) <= set(known):
        return f"must be a non-empty list of distinct hidden models among {list(known)}"
    return None


def _hosts(v: list) -> str | None:
    bad = [h for h in v if not isinstance(h, str) or not h.rpartition(":")[0] or not h.rpartition(":")[2].isdigit()]
    return f"{bad} are not host:port addresses (e.g. 10.0.0.2:12345)" if bad else None


def _run_name(v: str) -> str | None:
    return (
        None
        if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v)
        else "must be a folder name of letters, digits, '.', '_' or '-'"
    )


def _weight_pairs(value) -> str | None:
    """The multitask sweep's (w_rating, w_retrieval) settings: distinct pairs of numbers >= 0, never (0, 0)."""
    if not value:
        return "must list at least one (w_rating, w_retrieval) pair, e.g. [[1.0, 0.0], [1.0, 0.1]]"
    for i, pair in enumerate(value):
        numbers = isinstance(pair, list) and all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in pair)
        if not numbers or len(pair) != 2:
            return f"item {i} ({pair!r}) must be a pair of numbers [w_rating, w_retrieval]"
        if min(pair) < 0 or max(pair) == 0:
            return f"item {i} ({pair!r}) must have weights >= 0, not both 0"
    if len({tuple(float(w) for w in pair) for pair in value}) != len(value):
        return "lists a pair twice"
    return None


def _value_checks() -> dict[str, Callable[[Any], str | None]]:
    # imported here so the choices live once, in the module that implements them
    from recsys.data.geo import GEO_BACKENDS
    from recsys.data.movielens import KNOWN_DATASETS, SYNTHETIC_FORMATS
    from recsys.features.splits import SPLIT_STRATEGIES
    from recsys.models.configs import HEAD_INPUTS, NEGATIVES, OPTIMIZERS, RETRIEVAL_INDEXES, SERVED_RETRIEVERS
    from recsys.ranking.ranker_state import RANKER_NAMES
    from recsys.training.distributed.cluster import STRATEGIES

    return {
        "run_name": _run_name,
        "seed": _at_least(0),
        "dataset": _one_of(*KNOWN_DATASETS),
        "download.sources": _non_empty,
        "download.timeout_s": _at_least(1),
        "synthetic.format": _one_of(*SYNTHETIC_FORMATS),
        "synthetic.n_users": _at_least(10),
        "synthetic.n_movies": _at_least(25),
        "synthetic.ratings_per_user": _at_least(20),
        "synthetic.n_factors": _at_least(1),
        "synthetic.noise": _at_least(0),
        "geo.backend": _one_of(*GEO_BACKENDS),
        "split.strategy": _one_of(*SPLIT_STRATEGIES),
        "split.val_share": _share,
        "split.test_share": _share,
        "split.min_ratings_per_user": _at_least(1),
        "split.eval_users": _at_least(0),
        "baselines.random_draws": _at_least(1),
        "baselines.bias_iters": _at_least(1),
        "baselines.n_jobs": _at_least(1),
        "baselines.bias_grid.reg_user": _grid(_at_least(0)),
        "baselines.bias_grid.reg_item": _grid(_at_least(0)),
        "baselines.svd_grid.n_factors": _grid(_positive),
        "baselines.svd_grid.n_epochs": _grid(_positive),
        "baselines.svd_grid.lr_all": _grid(_positive),
        "baselines.svd_grid.reg_all": _grid(_at_least(0)),
        "rating.features": _features,
        "rating.embedding_dim": _at_least(1),
        "rating.side_dim": _at_least(1),
        "rating.mlp_layers": lambda v: next((f"item {i} ({u}) must be >= 1" for i, u in enumerate(v) if u < 1), None),
        "rating.dropout": _share,
        "rating.l2": _at_least(0),
        "rating.bias_l2": _at_least(0),
        "rating.init_std": _positive,
        "rating.head_on": _one_of(*HEAD_INPUTS),
        "rating.id_learning_rate": _at_least(0),
        "rating.optimizer": _one_of(*OPTIMIZERS),
        "rating.learning_rate": _positive,
        "rating.batch_size": _at_least(1),
        "rating.max_epochs": _at_least(1),
        "rating.patience": _at_least(0),
        "rating.val_grid.learning_rate": _grid(_positive, may_be_empty=True),
        "rating.val_grid.l2": _grid(_at_least(0), may_be_empty=True),
        "rating.val_grid.bias_l2": _grid(_at_least(0), may_be_empty=True),
        "rating.val_grid.id_learning_rate": _grid(_at_least(0), may_be_empty=True),
        "rating.val_grid.embedding_dim": _grid(_at_least(1), may_be_empty=True),
        "rating.val_grid.dropout": _grid(_share, may_be_empty=True),
        "rating.bootstrap": _at_least(1),
        "retrieval.features": _features,
        "retrieval.embedding_dim": _at_least(1),
        "retrieval.side_dim": _at_least(1),
        "retrieval.init_std": _positive,
        "retrieval.temperature": _positive,
        "retrieval.learning_rate": _positive,
        "retrieval.batch_size": _at_least(2),
        "retrieval.epochs": _at_least(1),
        "retrieval.patience": _at_least(0),
        "retrieval.min_rating": _one_of(1, 2, 3, 4, 5),
        "retrieval.model": _one_of(*SERVED_RETRIEVERS),
        "retrieval.negatives": _distinct(_one_of(*NEGATIVES)),
        "retrieval.uniform_negatives": _at_least(1),
        "retrieval.bpr_negatives": _at_least(1),
        "retrieval.bpr_alpha": _at_least(0),
        "retrieval.popularity_prior_grid": _grid(_at_least(0)),
        "retrieval.index": _one_of(*RETRIEVAL_INDEXES),
        "faiss.hnsw_m": _at_least(2),
        "faiss.hnsw_ef_construction": _at_least(1),
        "faiss.hnsw_ef_search": _at_least(1),
        "faiss.ivf_nlist": _at_least(1),
        "faiss.ivf_nprobe": _at_least(1),
        "sequential.history_length": _at_least(1),
        "sequential.window_targets": _at_least(1),
        "sequential.target_horizon": _at_least(1),
        "sequential.embedding_dim": _at_least(1),
        "sequential.temperature": _positive,
        "sequential.learning_rate": _positive,
        "sequential.batch_size": _at_least(1),
        "sequential.epochs": _at_least(1),
        "sequential.patience": _at_least(0),
        "multitask.features": _features,
        "multitask.embedding_dim": _at_least(1),
        "multitask.side_dim": _at_least(1),
        "multitask.mlp_layers": lambda v: next(
            (f"item {i} ({u}) must be >= 1" for i, u in enumerate(v) if u < 1), None
        ),
        "multitask.dropout": _share,
        "multitask.l2": _at_least(0),
        "multitask.bias_l2": _at_least(0),
        "multitask.init_std": _positive,
        "multitask.id_learning_rate": _at_least(0),
        "multitask.learning_rate": _positive,
        "multitask.temperature": _positive,
        "multitask.batch_size": _at_least(2),
        "multitask.retrieval_group": _at_least(0),
        "multitask.max_epochs": _at_least(1),
        "multitask.patience": _at_least(0),
        "multitask.weight_pairs": _weight_pairs,
        "multitask.rmse_tolerance": _at_least(0),
        "split.foldin_share": _share,
        "split.foldin_given": _grid(_at_least(1)),
        "split.new_movie_share": lambda v: None if 0 <= v < 1 else "must be in [0, 1)",
        "split.new_movie_min_ratings": _at_least(1),
        "ease.l2_grid": _grid(_positive),
        "ease.max_items": _at_least(0),
        "least_viewed.per_user": _at_least(0),
        "sequential.max_windows_per_user": _at_least(0),
        "scann.num_leaves": _at_least(1),
        "scann.num_leaves_to_search": _at_least(1),
        "scann.num_reordering_candidates": _at_least(0),
        "scann.k": _at_least(1),
        "online.n_candidates": _at_least(1),
        "online.k": _at_least(1),
        "online.example_users": _at_least(0),
        "online.latency_requests": _at_least(1),
        "online.ranker": _one_of("learned", "rating"),
        "ranker.served": _one_of(*RANKER_NAMES),
        "ranker.holdout_share": lambda v: None if 0.0 < v < 1.0 else "must be a share in (0, 1)",
        "ranker.bootstrap": _at_least(0),
        "ranker.lambdarank.num_leaves": _grid(_at_least(2)),
        "ranker.lambdarank.min_child_samples": _grid(_at_least(1)),
        "ranker.lambdarank.learning_rate": _positive,
        "ranker.lambdarank.truncation_level": _at_least(1),
        "ranker.lambdarank.max_rounds": _at_least(1),
        "ranker.lambdarank.early_stopping_rounds": _at_least(1),
        "ranker.dcn.embedding_dim": _at_least(1),
        "ranker.dcn.cross_layers": _at_least(0),
        "ranker.dcn.deep_layers": lambda v: next(
            (f"item {i} ({u}) must be >= 1" for i, u in enumerate(v) if u < 1), None
        ),
        "ranker.dcn.learning_rate": _positive,
        "ranker.dcn.batch_users": _at_least(1),
        "ranker.dcn.max_epochs": _at_least(1),
        "ranker.dcn.patience": _at_least(0),
        "weighted_sampling.depth": _at_least(10),
        "weighted_sampling.repeats": _at_least(1),
        "weighted_sampling.temperatures": _grid(_positive),
        "weighted_sampling.example_users": _at_least(0),
        "noise.target": _one_of("user", "movie"),
        "noise.sigmas": _grid(_at_least(0)),
        "least_viewed.max_views": _at_least(0),
        "least_viewed.retrieval_k": _at_least(1),
        "least_viewed.example_users": _at_least(0),
        "least_viewed.new_movie_bootstrap": _at_least(1),
        "weighted_sampling.max_ndcg_loss": lambda v: None if 0.0 <= v < 1.0 else "must be a share in [0, 1)",
        "noise.max_ndcg_loss": lambda v: None if 0.0 <= v < 1.0 else "must be a share in [0, 1)",
        "simulation.rounds": _at_least(1),
        "simulation.k": _at_least(1),
        "simulation.users": _at_least(0),
        "simulation.repeats": _at_least(2),
        "simulation.hidden_models": _hidden_models,
        "simulation.hidden_svd_rank": _at_least(1),
        "simulation.background_sample": _at_least(10),
        "simulation.processes": _at_least(1),
        "distribute.strategy": _one_of(*STRATEGIES),
        "distribute.workers": _at_least(1),
        "distribute.hosts": _hosts,
        "distribute.timeout_s": _positive,
        "distribute.max_restarts": _at_least(0),
    }


def get(params: dict, key: str) -> Any:
    """Look up a dotted key (`split.strategy`) in nested params."""
    value: Any = params
    for part in key.split("."):
        value = value[part]
    return value


def validate(params: dict) -> None:
    """Check values beyond their types (choices, ranges, combinations); raise ParamsError naming the key."""
    for key, check in _value_checks().items():
        try:
            value = get(params, key)
        except KeyError:
            continue  # a test's reduced schema may not have every group
        problem = check(value)
        if problem:
            raise ParamsError(f"{key}={value!r}: {problem}")
    scann = params.get("scann", {})
    if scann and scann["num_leaves_to_search"] > scann["num_leaves"]:
        raise ParamsError(
            f"scann.num_leaves_to_search={scann['num_leaves_to_search']}: must be <= scann.num_leaves "
            f"({scann['num_leaves']})"
        )
    faiss = params.get("faiss", {})
    if faiss and faiss["ivf_nprobe"] > faiss["ivf_nlist"]:
        raise ParamsError(f"faiss.ivf_nprobe={faiss['ivf_nprobe']}: must be <= faiss.ivf_nlist ({faiss['ivf_nlist']})")
    split = params.get("split", {})
    if split and split["val_share"] + split["test_share"] >= 1.0:
        raise ParamsError(
            f"split.val_share + split.test_share = {split['val_share'] + split['test_share']}: "
            "must leave a share for train (sum < 1)"
        )
