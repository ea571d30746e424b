"""The learned rankers behind one interface: build by name, fit, predict, save, and load whichever was saved."""

from __future__ import annotations

import os
from collections.abc import Sequence

from recsys.ranking.ranker_state import RANKER_NAMES, Ranker, read_state


def make_ranker(name: str, features: Sequence[str], params: dict, seed: int) -> Ranker:
    """A fresh ranker of the kind `name` (one of RANKER_NAMES) with its params group."""
    if name == "lambdarank":
        from recsys.ranking.lambdarank import LambdaRankRanker

        return LambdaRankRanker(features, params, seed)
    if name == "dcn":
        from recsys.ranking.dcn_ranker import DCNRanker

        return DCNRanker(features, params, seed)
    raise ValueError(f"unknown ranker {name!r}; choose one of {', '.join(RANKER_NAMES)}")


def load_ranker(folder: str | os.PathLike) -> Ranker:
    """Whichever ranker `save` wrote into `folder`, rebuilt to give the same scores.

    Raises:
        FileNotFoundError: no saved ranker there.
    """
    if read_state(folder)["name"] == "lambdarank":
        from recsys.ranking.lambdarank import LambdaRankRanker

        return LambdaRankRanker.load(folder)
    from recsys.ranking.dcn_ranker import DCNRanker

    return DCNRanker.load(folder)
