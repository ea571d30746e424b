"""Reload checks: a saved retrieval index or sequential model must answer as the live one did."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import tensorflow as tf

from recsys.evaluation.score_blocks import top_k_in_blocks
from recsys.models import sequential_model
from recsys.retrieval import indexes


def index_reloads_the_same(index: Any, path: str | os.PathLike, queries: np.ndarray, k: int, more: int = 50) -> bool:
    """Whether the index saved at `path` gives the live `index`'s top-k lists for `queries`, also when asked for more.

    A reloaded index must serve as the one in memory: the same k movies in the same order, for
    a list of k and as the first k of a longer list (k + `more`, capped at the catalogue).

    Args:
        index: the live index as built (a TFRS layer or a `faiss_indexes.FaissIndex`), taking user ids or
            query vectors.
        path: where `indexes.save_index` wrote it (`indexes.load_index` reads any kind).
        queries: user ids (integers) or query vectors (floats, one per row).
        k: list length compared.
        more: how much longer the longer list is.
    """
    queries = np.asarray(queries)
    queries = tf.constant(queries, tf.float32 if queries.dtype.kind == "f" else tf.int32)
    reloaded = indexes.load_index(path)
    live = index(queries, k=k)[1].numpy()
    same = reloaded(queries, k=k)[1].numpy()
    longer = reloaded(queries, k=min(k + more, reloaded.n_candidates))[1].numpy()
    return bool(np.array_equal(live, same) and np.array_equal(longer[:, :k], live))


def sequential_reloads_the_same(
    model: sequential_model.SequentialRetrievalModel, path: str | os.PathLike, histories: np.ndarray, k: int
) -> bool:
    """Whether the sequential model saved at `path` ranks the same top-k catalogue movies as `model` for `histories`.

    Args:
        model: the live model.
        path: where `sequential_model.save_sequential_model` wrote it.
        histories: (n, history_length) encoded histories (`sequential_model.user_histories`).
        k: list length compared.
    """
    reloaded, _ = sequential_model.load_sequential_model(path)
    live = top_k_in_blocks(sequential_model.full_ranking_scores(model, histories), k)
    return bool(np.array_equal(top_k_in_blocks(sequential_model.full_ranking_scores(reloaded, histories), k), live))
