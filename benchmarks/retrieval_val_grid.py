#!/usr/bin/env python
"""The two-tower retrieval model's settings against EASE on val alone: how far re-tuning takes its top 10.

    python benchmarks/retrieval_val_grid.py --run artifacts/<run> '{}' '{"embedding_dim": 128}' \\
        '{"features": ["ids"], "epochs": 30}' ...

Each argument is a JSON object of `retrieval` settings that replace the run's own (its manifest's;
of a list of `negatives`, the first, unless the setting names one).
Each setting is fitted on the run's train split and early-stopped on val Recall@100, as notebook 05
trains each variant (`retrieval_training.train_retrieval_model` with its full-ranking monitor); then
every weight of the popularity prior (`--prior-grid`, default the run's
`retrieval.popularity_prior_grid`, with 0 always among them) is scored on val (`choose_popularity_prior`), and the best val
Recall@10 is kept, as 05 gives its train + val list its prior. EASE is tuned on val over the run's
`ease.l2_grid` (fitted on train) and scored on the same val users. Test is never read.

Writes benchmarks/results/retrieval_val_grid.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.candidate_sources_val import run_params  # noqa: E402
from recsys.core.io import write_json  # noqa: E402
from recsys.runs.registry import ARTIFACTS  # noqa: E402

SHOWN = ("recall_at_10", "ndcg_at_10", "recall_at_100")


def settings_of(texts: list[str], base: dict) -> list[dict]:
    """Each JSON argument merged over the run's retrieval settings; SystemExit naming the argument that is not a JSON
    object of known settings."""
    points = []
    for text in texts:
        try:
            change = json.loads(text)
        except json.JSONDecodeError as error:
            raise SystemExit(f"setting {text!r} is not JSON ({error}); e.g. '{{\"embedding_dim\": 128}}'") from error
        unknown = sorted(set(change) - set(base)) if isinstance(change, dict) else None
        if unknown is None or unknown:
            raise SystemExit(f"setting {text!r} must be a JSON object of retrieval settings; unknown: {unknown}")
        points.append({**base, **change})
    return points


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a run folder whose preprocessing has run")
    parser.add_argument(
        "settings", nargs="+", help="JSON objects of retrieval settings, e.g. '{\"embedding_dim\": 128}'"
    )
    parser.add_argument("--prior-grid", type=float, nargs="+", help="popularity prior weights (default: the run's)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "retrieval_val_grid.json")
    args = parser.parse_args(argv)
    params = run_params(args.run)
    base = dict(params["retrieval"])
    points = settings_of(args.settings, base)
    # 0 (the model as trained) is always scored: `recall_at_100_no_prior` reads it
    grid = sorted({0.0, *(args.prior_grid or params["retrieval"]["popularity_prior_grid"])})

    from recsys.evaluation.full_ranking import evaluate_scores  # TensorFlow from here
    from recsys.models.configs import RetrievalConfig
    from recsys.models.ease import tune_ease
    from recsys.training import retrieval_training
    from recsys.training.curves import TrainingCurve
    from recsys.training.retrieval_inputs import load_retrieval_inputs

    configs = [RetrievalConfig.from_params(point) for point in points]  # a wrong value fails before any fit

    def artifact(name: str) -> Path:
        stage, filename = ARTIFACTS[name]
        return args.run / stage / filename

    inputs = load_retrieval_inputs(artifact, configs[0])
    matrices, seed = inputs.matrices, params["seed"]
    ease, _ = tune_ease(
        matrices.train, matrices.val, params["ease"]["l2_grid"], k=100, max_items=params["ease"]["max_items"]
    )
    ease_val = evaluate_scores(ease.row_scores(matrices.train), matrices, "val", (10, 100))
    reference = {"ease_lambda": float(ease.l2), **{name: float(ease_val[name]) for name in SHOWN}}
    print("EASE on val:", {key: round(value, 4) for key, value in reference.items()}, flush=True)
    monitor = retrieval_training.full_ranking_monitor(
        inputs.encoder, inputs.user_table, inputs.movie_table, matrices, split="val", k=100
    )
    rows = []
    for text, config in zip(args.settings, configs):
        started = time.perf_counter()
        trained = retrieval_training.train_retrieval_model(
            config, inputs.encoder, inputs.train, inputs.user_table, inputs.movie_table, seed, monitor=monitor
        )
        curve = TrainingCurve.of(trained.history, monitor.key)
        prior = retrieval_training.choose_popularity_prior(trained.model, inputs.train, inputs, grid, monitor)
        beta = prior.best("recall_at_10")
        at_beta = prior.table.loc[beta]
        rows.append(
            {
                "setting": json.loads(text),
                "epochs": len(curve.table),
                "best_epoch": curve.best_epoch,
                "fit_s": trained.wall_s,
                "recall_at_100_no_prior": float(prior.table.loc[0.0, "recall_at_100"]),
                "list_prior": beta,
                **{name: float(at_beta[name]) for name in SHOWN},
                "recall_at_10_over_ease": float(at_beta["recall_at_10"]) / reference["recall_at_10"],
                "seconds": time.perf_counter() - started,
            }
        )
        shown = {key: round(value, 4) if isinstance(value, float) else value for key, value in rows[-1].items()}
        print(shown, flush=True)
    write_json(args.out, {"run": str(args.run), "ease_val": reference, "prior_grid": list(grid), "settings": rows})
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
