"""The artifact registry: which notebook writes which artifact of a run, under which file name; the manifest file."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

MANIFEST = "manifest.json"
# a notebook's number: two digits, and a letter for one inserted between two others (05b runs after 05, before 06)
STAGE_NUMBER = re.compile(r"(\d\d[a-z]?)_")


def stage_number(stage: str) -> str:
    """The number of a notebook (`05b` of `05b_multitask`), as run_all.py's --only/--from/--until take it."""
    found = STAGE_NUMBER.match(stage)
    if found is None:
        raise ValueError(
            f"{stage!r} is not a notebook's name: it starts with its number (NN_ or NNa_), e.g. 05_retrieval"
        )
    return found.group(1)


class MissingArtifactError(FileNotFoundError):
    """An input of this notebook does not exist yet: an earlier notebook has to run first."""


# Every artifact a notebook hands to a later one: name -> (the notebook that writes it, file name).
# Notebooks read and write them through `Run.path` / `Run.require`, never by spelling out paths.
ARTIFACTS: dict[str, tuple[str, str]] = {
    "users": ("01_preprocess", "users.parquet"),
    "movies": ("01_preprocess", "movies.parquet"),
    "interactions": ("01_preprocess", "interactions.parquet"),  # every user but the fold-in ones
    "foldin_interactions": ("01_preprocess", "foldin_interactions.parquet"),  # kept out of every model
    "new_movies": ("01_preprocess", "new_movies.parquet"),  # item cold start: not in `movies`, the catalogue
    # ratings of the new movies (cold start) by users with test ratings: kept out of every model, scored in 09
    "new_movie_interactions": ("01_preprocess", "new_movie_interactions.parquet"),
    "data_quality": ("01_preprocess", "data_quality.parquet"),
    "dataset_info": ("01_preprocess", "dataset.json"),  # the release: rating scale, feature groups
    "baseline_results": ("03_baselines", "results.parquet"),
    # test ratings with the tuned bias and SVD predictions (clipped), for paired comparisons (04)
    "baseline_test_predictions": ("03_baselines", "test_predictions.parquet"),
    "rating_model": ("04_two_tower_rating", "rating_model"),  # refitted on train + val
    "rating_model_train": ("04_two_tower_rating", "rating_model_train"),  # fitted on train only
    "rating_jobs": ("04_two_tower_rating", "distributed_jobs"),  # distribute.strategy multi_worker: jobs, logs
    "feature_store": ("06_retrieval_ranking", "feature_store"),
    "two_stage_candidates": ("06_retrieval_ranking", "candidates.parquet"),
    # the val stage (train history, candidates excluding train) the exploration settings are chosen on
    "val_feature_store": ("06_retrieval_ranking", "val_feature_store"),
    "val_stage_candidates": ("06_retrieval_ranking", "val_candidates.parquet"),  # with the served ranker's score
    # the retrieval model folder holds its own encoder.json (a refit on train + val has its own vocabularies)
    "retrieval_model": ("05_retrieval", "retrieval_model"),
    "multitask_model": ("05b_multitask", "multitask_model"),  # the chosen joint setting refitted on train + val
    "multitask_model_train": ("05b_multitask", "multitask_model_train"),  # the same setting fitted on train only
    "retrieval_jobs": ("05_retrieval", "distributed_jobs"),  # distribute.strategy multi_worker: jobs, logs
    "movie_embeddings": ("05_retrieval", "movie_embeddings.npy"),
    "movie_embedding_ids": ("05_retrieval", "movie_embedding_ids.npy"),
    "bruteforce_index": ("05_retrieval", "bruteforce_index"),
    "served_index": ("05_retrieval", "served_index"),  # retrieval.index: ScaNN, FAISS HNSW/IVF or BruteForce
    "ease_model": ("05_retrieval", "ease_model"),
    "sequential_model": ("05_retrieval", "sequential_model"),
    "sequential_movie_embeddings": ("05_retrieval", "sequential_movie_embeddings.npy"),
    "sequential_bruteforce_index": ("05_retrieval", "sequential_bruteforce_index"),
    "sequential_served_index": ("05_retrieval", "sequential_served_index"),
    "ranker": ("06_retrieval_ranking", "ranker"),  # the learned ranker recommend() serves
    # the exploration settings the simulation (notebook 10) serves, chosen by notebooks 07 and 08
    "weighted_sampling_setting": ("07_explore_weighted_sampling", "setting.json"),
    "noise_setting": ("08_explore_gaussian_noise", "setting.json"),
}


def _registered(artifact: str) -> tuple[str, str]:
    """(writing notebook, file name) of an artifact, or a KeyError listing the known ones."""
    if artifact not in ARTIFACTS:
        raise KeyError(f"unknown artifact {artifact!r}; known: {', '.join(ARTIFACTS)}")
    return ARTIFACTS[artifact]


def read_metrics(run_dir: str | os.PathLike, stage: str) -> dict:
    """A notebook's metrics.json in a run folder ({} if it has not run)."""
    path = Path(run_dir) / stage / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else {}
