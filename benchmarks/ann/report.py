"""The parent's report: ann.json (the old ScaNN headline and every method's keys), the figure, the table."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
from pathlib import Path

from benchmarks.ann.settings import BATCH_THREADS, METHODS, RECALL_TARGET, SELECTION_RECALL, SPEEDUP_TARGET, K
from recsys.core.io import save_figure

LABELS = {"bruteforce": "BruteForce (TF)", "scann": "ScaNN", "faiss_hnsw": "FAISS HNSW", "faiss_ivfpq": "FAISS IVF-PQ"}
COLOURS = {"bruteforce": "black", "scann": "#4C72B0", "faiss_hnsw": "#DD8452", "faiss_ivfpq": "#55A868"}
# keys every method gets in ann.json (None when it did not run)
METHOD_KEYS = (
    "qps",
    "recall_at_10",
    "build_s",
    "single_query_ms",
    "single_query_p95_ms",
    "peak_rss_gb",
    "settings",
    "tuning",
)


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def merge(args: argparse.Namespace, runs: dict[str, dict], context: dict) -> dict:
    """ann.json: the old headline keys (ScaNN against BruteForce) and every method's `<method>_<key>`."""
    result = {
        "n_candidates": args.n,
        "dim": args.dim,
        "clusters": args.clusters,
        "n_queries": args.n_queries,
        "seed": args.seed,
        "k": K,
        "dataset_kind": args.dataset_kind,
        "cpu_count": os.cpu_count(),
        "recall_target": RECALL_TARGET,
        "selection_recall_on_tuning_queries": SELECTION_RECALL,
        "speedup_target": SPEEDUP_TARGET,
        "tf_version": package_version("tensorflow"),
        "scann_version": package_version("scann"),
        "faiss_version": package_version("faiss-cpu"),
        **context,
    }
    bruteforce_qps = runs.get("bruteforce", {}).get("qps")
    for method in METHODS:
        run = runs.get(method, {})
        result |= {f"{method}_{key}": run.get(key) for key in METHOD_KEYS}
        result |= {f"{method}_{key}": value for key, value in run.items()}
        speedup = run["qps"] / bruteforce_qps if run and bruteforce_qps else None
        result[f"{method}_speedup_qps"] = speedup
    scann = runs.get("scann", {})
    result |= {
        "bruteforce_route": (result["bruteforce_settings"] or {}).get("route"),
        "bruteforce_single_query_latency_ms": result["bruteforce_single_query_ms"],
        "scann_single_query_latency_ms": result["scann_single_query_ms"],
        "speedup_qps": result["scann_speedup_qps"],
        "target_met": bool(
            result["scann_speedup_qps"]
            and result["scann_speedup_qps"] >= SPEEDUP_TARGET
            and scann["recall_at_10"] >= RECALL_TARGET
        ),
        "settings": scann.get("settings"),
        "tuning": scann.get("tuning"),
    }
    return result


def pareto_front(points: list[dict]) -> list[dict]:
    """The points no other point beats on both recall and queries/s, by increasing recall."""
    front, best_qps = [], 0.0
    for point in sorted(points, key=lambda p: (-p["recall_at_10"], -p["qps"])):
        if point["qps"] > best_qps:
            front.append(point)
            best_qps = point["qps"]
    return front[::-1]


def plot(result: dict, runs: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    for method, run in runs.items():
        points, colour = run["tuning"], COLOURS[method]
        ax.scatter([p["recall_at_10"] for p in points], [p["qps"] for p in points], s=16, alpha=0.5, color=colour)
        front = pareto_front(points)
        ax.plot([p["recall_at_10"] for p in front], [p["qps"] for p in front], color=colour, label=LABELS[method])
        chosen = next(p for p in points if p["chosen"])
        ax.scatter(chosen["recall_at_10"], chosen["qps"], s=140, marker="*", color=colour, edgecolor="black", zorder=3)
    ax.axvline(RECALL_TARGET, color="#C44E52", ls="--", lw=1, label=f"recall@10 = {RECALL_TARGET}")
    ax.set(
        yscale="log",
        xlabel="recall@10 (tuning queries)",
        ylabel=f"queries/s (batched, {BATCH_THREADS} threads)",
        title=f"{result['n_candidates']:,} x {result['dim']}-d candidates, {result['dataset_kind']}: "
        "every grid setting (star: chosen)",
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    save_figure(fig, path)
    plt.close(fig)


def print_table(result: dict, methods: list[str]) -> None:
    def cell(value, spec: str, width: int) -> str:
        return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"

    print(
        f"\n{'':<16}{'build s':>10}{'queries/s':>12}{'x BF':>8}{'single ms':>11}{'p95 ms':>9}"
        f"{'recall@10':>11}{'peak GB':>9}"
    )
    for m in methods:
        print(
            f"{LABELS[m]:<16}{cell(result[f'{m}_build_s'], '.1f', 10)}{cell(result[f'{m}_qps'], ',.0f', 12)}"
            f"{cell(result[f'{m}_speedup_qps'], '.1f', 8)}{cell(result[f'{m}_single_query_ms'], '.3f', 11)}"
            f"{cell(result[f'{m}_single_query_p95_ms'], '.3f', 9)}{cell(result[f'{m}_recall_at_10'], '.4f', 11)}"
            f"{cell(result[f'{m}_peak_rss_gb'], '.2f', 9)}"
        )
    if result["speedup_qps"] is not None:
        print(
            f"ScaNN / BruteForce queries/s: {result['speedup_qps']:.1f}x (target >= {SPEEDUP_TARGET:.0f}x at recall@10 "
            f">= {RECALL_TARGET}): {'met' if result['target_met'] else 'NOT met'}"
        )
