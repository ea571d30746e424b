#!/usr/bin/env python
"""How the learned ranker's val NDCG@10 grows with the number of labelled users: is it short of labels?

    python benchmarks/ranker_learning_curve.py --run artifacts/<run>        # a finished run with notebook 06

Notebook 06's LambdaRank learns from the val stage: each user's candidates, labelled by the user's
val movies. This rebuilds that stage from the run's saved files (`candidate_sources_val.val_stage`)
and fits LambdaRank as 06 fits its grid (`learned_ranking.lambdarank_grid`) on a seeded share of
06's training users, for each share of `--fractions` (`--repeats` draws each; one at 1.0). 06's
held-out users are cut in two by a seeded draw, the same for every fit: one half early-stops the
grid and chooses its point, the other half is scored, Recall@10 and NDCG@10 of its top 10 over the
whole catalogue against its val movies. Test is never read.

The slope is the least-squares NDCG@10 gained per doubling of the labelled users (mean of each
share's draws against log2 of its users). It says what a larger labelled stage (more users, or more
labelled slices of the same users) could be worth, before anything is built for it.

Writes benchmarks/results/ranker_learning_curve.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.candidate_sources_val import METRICS, ValStage, run_params, val_stage  # noqa: E402
from recsys.core.io import write_json  # noqa: E402


def check_fractions(fractions: list[float]) -> list[float]:
    """The shares sorted, each in (0, 1]; SystemExit naming a wrong one before any work is done."""
    wrong = [value for value in fractions if not 0 < value <= 1]
    if wrong or not fractions:
        raise SystemExit(f"--fractions must be shares of the training users in (0, 1], got {wrong or 'none'}")
    return sorted(set(fractions))


def learning_curve(stage: ValStage, params: dict, fractions: list[float], repeats: int) -> list[dict]:
    """One row per fit: fraction, draw, users, num_leaves, trees, recall_at_10, ndcg_at_10 (the scored half's means)."""
    from recsys.ranking import learned_ranking

    seed, grid = params["seed"], params["ranker"]["lambdarank"]
    training = np.flatnonzero(stage.train)
    stop = stage.data.users(stage.stop)
    rows = []
    for fraction in fractions:
        for draw in range(1 if fraction == 1 else repeats):
            keep = np.random.default_rng([seed, draw]).permutation(training)[: max(1, round(fraction * len(training)))]
            mask = np.zeros(len(stage.train), bool)
            mask[keep] = True
            setting, model, _ = learned_ranking.lambdarank_grid(
                stage.data.users(mask), stop, stage.features, grid, seed
            )
            scores = stage.score(model)
            rows.append(
                {
                    "fraction": fraction,
                    "draw": draw,
                    "users": int(mask.sum()),
                    "num_leaves": setting["num_leaves"],
                    "trees": int(model.best_iteration),
                    **{name: float(scores[name].mean()) for name in METRICS},
                }
            )
            print({key: round(value, 4) if isinstance(value, float) else value for key, value in rows[-1].items()})
    return rows


def summarise(rows: list[dict]) -> dict:
    """Per fraction: users, mean and std of NDCG@10 and Recall@10 over its draws; the NDCG@10 slope per doubling."""
    fractions = sorted({row["fraction"] for row in rows})
    per_fraction = []
    for fraction in fractions:
        group = [row for row in rows if row["fraction"] == fraction]
        per_fraction.append(
            {
                "fraction": fraction,
                "users": group[0]["users"],
                "draws": len(group),
                **{f"{name}_mean": float(np.mean([row[name] for row in group])) for name in METRICS},
                **{f"{name}_std": float(np.std([row[name] for row in group])) for name in METRICS},
            }
        )
    slope = np.nan
    if len(per_fraction) > 1:
        x = np.log2([row["users"] for row in per_fraction])
        slope = float(np.polyfit(x, [row["ndcg_at_10_mean"] for row in per_fraction], 1)[0])
    return {"per_fraction": per_fraction, "ndcg_at_10_per_doubling": slope}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished run with notebook 06")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--repeats", type=int, default=3, help="seeded draws of the users at each share below 1")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ranker_learning_curve.json")
    args = parser.parse_args(argv)
    fractions = check_fractions(args.fractions)
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, got {args.repeats}")
    params = run_params(args.run)
    stage = val_stage(args.run, params)
    rows = learning_curve(stage, params, fractions, args.repeats)
    summary = summarise(rows)
    for row in summary["per_fraction"]:
        print(
            f"{row['users']:>6} users ({row['draws']} draws): NDCG@10 {row['ndcg_at_10_mean']:.4f} "
            f"± {row['ndcg_at_10_std']:.4f}, Recall@10 {row['recall_at_10_mean']:.4f}"
        )
    print(f"NDCG@10 per doubling of the labelled users: {summary['ndcg_at_10_per_doubling']:+.4f}")
    result = {
        "run": str(args.run),
        "scored_users": int(stage.scored.sum()),
        "stop_users": int(stage.stop.sum()),
        "fits": rows,
        **summary,
    }
    write_json(args.out, result)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
