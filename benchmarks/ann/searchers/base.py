"""What a searcher is to the protocol (a built index, its grid, its search functions), and the shared loaders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil


@dataclass
class Searcher:
    """A built index: its search-time grid, how to search at a setting, what the build cost."""

    grid: list[dict]
    at: Callable[[dict], Callable[[np.ndarray], np.ndarray]]  # setting -> batched search returning ids
    one_at: Callable[[dict], Callable[[np.ndarray], object]]  # setting -> search of one query
    settings: dict  # build-time settings and route
    info: dict  # build_s, index_rss_delta_gb, ...
    single_thread: Callable[[], None] = lambda: None  # switch to one thread before timing single queries


def rss_gb() -> float:
    return psutil.Process().memory_info().rss / 1e9


def load_candidates(cache: Path) -> np.ndarray:
    return np.load(cache / "candidates.npy")
