#!/usr/bin/env python
"""Two runs' candidate sources compared on val alone: the evidence behind `online.joint_candidates` in params/default.yaml.

    python benchmarks/candidate_sources_val.py --base artifacts/<run without> --other artifacts/<run with>

The two runs must differ in `online` settings only (e.g. `online.joint_candidates`). For each, notebook
06's val stage is rebuilt from the run's saved files: its val-stage candidates and feature store,
the features from the train-only models (`learned_ranking.feature_sources`), and LambdaRank fitted
as 06 fits its grid (`learned_ranking.lambdarank_grid`: each point fitted on 06's training val users).
06's held-out users (`ranker.holdout_share`) are cut in two by a seeded draw: one half early-stops
the grid and chooses its point, the other half is scored. Their top 10 is scored against all their
val movies over the whole catalogue (`setting_choice.ValEvaluator`), and the difference other - base
gets a 95% paired bootstrap interval over those users (`paired.paired_differences`): one fit per
run, so the interval covers the users' spread, not the fits'. The users are the same in both runs
(the same seed and val users). Test is never read.

Writes benchmarks/results/candidate_sources_val.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from recsys.core.io import write_json  # noqa: E402
from recsys.evaluation import metrics  # noqa: E402
from recsys.evaluation.full_ranking import catalogue_columns  # noqa: E402
from recsys.evaluation.paired import paired_differences  # noqa: E402
from recsys.exploration.setting_choice import ValEvaluator  # noqa: E402
from recsys.features.preprocessing import EVENT_COLUMNS  # noqa: E402
from recsys.retrieval.candidates import candidate_recall  # noqa: E402
from recsys.runs.registry import ARTIFACTS, MANIFEST  # noqa: E402

if TYPE_CHECKING:
    from recsys.ranking.learned_ranking import StageData

METRICS = ("recall_at_10", "ndcg_at_10")


def run_params(run: Path) -> dict:
    manifest = run / MANIFEST
    if not manifest.exists():
        raise SystemExit(f"{run} has no {MANIFEST}: pass a run folder that notebook 06 has written")
    return json.loads(manifest.read_text())["params"]


def check_comparable(base: dict, other: dict) -> list[str]:
    """The `online` settings that differ; SystemExit if any other group differs (the comparison would be unfair)."""
    groups = sorted(
        name for name in base.keys() | other.keys() if name != "online" and base.get(name) != other.get(name)
    )
    if groups:
        raise SystemExit(f"the runs differ beyond `online`, in {groups}: compare runs that differ in online only")
    online = sorted(
        k for k in base["online"].keys() | other["online"].keys() if base["online"].get(k) != other["online"].get(k)
    )
    if not online:
        raise SystemExit("the runs have the same online settings: nothing to compare")
    return online


@dataclass
class ValStage:
    """Notebook 06's val stage rebuilt from a run's saved files, with 06's users cut as its grid cuts them.

    Attributes:
        data: the val-stage candidates, their features (train-only models) and labels.
        features: the feature columns 06's rankers read.
        candidates: the saved val-stage candidates.
        val: the (user_id, movie_id) val interactions (the labels).
        evaluator: scores top-10 lists over the whole catalogue against each user's val movies.
        train: 06's training users (a per-user mask over `data`'s users).
        stop: half of 06's held-out users: the grid's early stopping and choice.
        scored: the other half: what is scored, with nothing fitted or chosen on it.
    """

    data: StageData
    features: list[str]
    candidates: pd.DataFrame
    val: pd.DataFrame
    evaluator: ValEvaluator
    train: np.ndarray
    stop: np.ndarray
    scored: np.ndarray

    def score(self, model) -> pd.DataFrame:
        """Per scored user (index), Recall@10 and NDCG@10 of `model`'s top 10 over the whole catalogue, on val."""
        from recsys.ranking import learned_ranking

        judged = self.data.users(self.scored)
        users = np.unique(judged.candidates["user_id"].to_numpy())
        lists = learned_ranking.top_k_lists(judged.candidates, model.predict(judged.features), users, 10)
        relevant = self.evaluator.relevant[np.searchsorted(self.evaluator.users, users)]
        columns = catalogue_columns(self.evaluator.catalogue, lists)
        per_user = metrics.per_user_retrieval_metrics(columns, relevant, (10,))
        return pd.DataFrame({name: per_user[name] for name in METRICS}, index=users[per_user["user_rows"]])


def val_stage(run: Path, params: dict) -> ValStage:
    """06's val stage of a finished run, and its users: 06's training users, and 06's held-out users (`ranker.holdout_share`)
    cut in two by a seeded draw, one half to stop and choose the grid, the other to be scored."""
    from recsys.features.feature_store import FeatureStore
    from recsys.features.request_context import fixed_context
    from recsys.ranking import learned_ranking

    def artifact(name: str) -> Path:
        stage, filename = ARTIFACTS[name]
        return run / stage / filename

    interactions = pd.read_parquet(artifact("interactions"), columns=list(EVENT_COLUMNS))
    movies = pd.read_parquet(artifact("movies"))
    store = FeatureStore.load(artifact("val_feature_store"))
    candidates = pd.read_parquet(artifact("val_stage_candidates")).drop(columns=["score"])
    online, ranker = params["online"], params["ranker"]
    sources = learned_ranking.feature_sources(
        store,
        artifact("ease_model"),
        artifact("rating_model_train"),
        online["n_candidates"],
        fixed_context(interactions),
        interactions,
        joint_folder=artifact("multitask_model_train"),
    )
    val = interactions[interactions["split"] == "val"][["user_id", "movie_id"]]
    data = learned_ranking.stage_data(candidates, sources, "val", val)
    held = learned_ranking.holdout_mask(len(data.groups), ranker["holdout_share"], params["seed"])
    scored = np.zeros(len(held), bool)
    held_rows = np.flatnonzero(held)
    scored[np.random.default_rng(params["seed"]).permutation(held_rows)[: len(held_rows) // 2]] = True
    evaluator = ValEvaluator.build(interactions, movies)
    return ValStage(data, list(sources.features), candidates, val, evaluator, ~held, held & ~scored, scored)


def held_out_lists(run: Path, params: dict) -> tuple[pd.DataFrame, dict]:
    """Per scored val user, Recall@10 and NDCG@10 of LambdaRank's top 10 (fitted as 06 fits it), and the stage's
    candidate recall."""
    from recsys.ranking import learned_ranking

    stage = val_stage(run, params)
    ranker = params["ranker"]
    setting, model, _ = learned_ranking.lambdarank_grid(
        stage.data.users(stage.train),
        stage.data.users(stage.stop),
        stage.features,
        ranker["lambdarank"],
        params["seed"],
    )
    table = stage.score(model)
    summary = {
        **{key: float(value) for key, value in candidate_recall(stage.candidates, stage.val).items()},
        "candidates_per_user": len(stage.candidates) / stage.candidates["user_id"].nunique(),
        "scored_users": len(table),
        "num_leaves": setting["num_leaves"],
        "trees": int(model.best_iteration),
        **{name: float(table[name].mean()) for name in METRICS},
    }
    return table, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="the run the difference is taken against")
    parser.add_argument("--other", type=Path, required=True, help="the run that differs in online settings only")
    parser.add_argument("--bootstrap", type=int, default=2000, help="paired bootstrap resamples of the users")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "candidate_sources_val.json")
    args = parser.parse_args(argv)
    params = {"base": run_params(args.base), "other": run_params(args.other)}
    differing = check_comparable(params["base"], params["other"])
    per_user, summaries = {}, {}
    for name, run in (("base", args.base), ("other", args.other)):
        per_user[name], summaries[name] = held_out_lists(run, params[name])
        print(
            name,
            {key: round(value, 4) if isinstance(value, float) else value for key, value in summaries[name].items()},
        )
    if not per_user["base"].index.equals(per_user["other"].index):
        raise SystemExit("the held-out val users differ between the runs: were they made from the same split and seed?")
    differences = paired_differences(per_user, [("other", "base")], METRICS, args.bootstrap, params["base"]["seed"])
    print(differences.table.round(4).to_string())
    result = {
        "base": str(args.base),
        "other": str(args.other),
        "differing_online": {
            key: [params["base"]["online"].get(key), params["other"]["online"].get(key)] for key in differing
        },
        "summaries": summaries,
        "other_minus_base": {
            metric: {
                "difference": float(row["difference"]),
                "low": float(row["low_2.5%"]),
                "high": float(row["high_97.5%"]),
                "verdict": str(row["verdict"]),
            }
            for (_, _, metric), row in differences.table.iterrows()
        },
    }
    write_json(args.out, result)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
