"""The parent's report: ann.json (the old ScaNN headline and every method's keys), the figure, the table."""

from __future__ import annotations

import argparse
import importlib.metadata
from pathlib import Path

from benchmarks.ann.settings import (
    BATCH_THREADS,
    EXACT_METHODS,
    EXACT_SPEEDUP_TARGET,
    METHODS,
    RECALL_TARGET,
    SELECTION_RECALL,
    SPEEDUP_TARGET,
    K,
)
from recsys.core.io import save_figure
from recsys.runs import machine

LABELS = {
    "bruteforce": "BruteForce (TF)",
    "faiss_flat": "FAISS Flat (exact)",
    "scann": "ScaNN",
    "faiss_hnsw": "FAISS HNSW",
    "faiss_ivfpq": "FAISS IVF-PQ",
}
COLOURS = {
    "bruteforce": "black",
    "faiss_flat": "#8C8C8C",
    "scann": "#4C72B0",
    "faiss_hnsw": "#DD8452",
    "faiss_ivfpq": "#55A868",
}
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
        **machine.describe(),  # platform, CPUs, CPU model: timings compare on one CPU
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
    result |= exact_baseline(runs)
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


def exact_baseline(runs: dict[str, dict]) -> dict:
    """The fastest exact search of this run, each method's queries/s against it, and ScaNN's target against it.

    ScaNN's target: >= EXACT_SPEEDUP_TARGET x the fastest exact search at measured recall@10 >= RECALL_TARGET,
    and ahead of every FAISS approximate index that reaches that recall (the best of them is named).
    """
    exact = {m: runs[m]["qps"] for m in EXACT_METHODS if runs.get(m, {}).get("qps")}
    if not exact:
        return {"exact_best_method": None, "exact_best_qps": None, "scann_exact_target_met": None}
    best = max(exact, key=exact.get)
    result = {"exact_best_method": best, "exact_best_qps": exact[best]}
    for method, run in runs.items():
        result[f"{method}_speedup_exact"] = run["qps"] / exact[best] if run.get("qps") else None
    faiss_at_target = {
        m: run["qps"]
        for m, run in runs.items()
        if m.startswith("faiss_") and m not in EXACT_METHODS and run.get("recall_at_10", 0) >= RECALL_TARGET
    }
    faiss_best = max(faiss_at_target, key=faiss_at_target.get) if faiss_at_target else None
    scann = runs.get("scann", {})
    result |= {
        "faiss_best_method": faiss_best,
        "faiss_best_qps": faiss_at_target.get(faiss_best),
        "exact_speedup_target": EXACT_SPEEDUP_TARGET,
        "scann_exact_target_met": bool(
            scann.get("qps")
            and scann["recall_at_10"] >= RECALL_TARGET
            and scann["qps"] >= EXACT_SPEEDUP_TARGET * exact[best]
            and all(scann["qps"] > qps for qps in faiss_at_target.values())
        ),
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
        f"\n{'':<20}{'build s':>10}{'queries/s':>12}{'x BF':>8}{'x exact':>9}{'single ms':>11}{'p95 ms':>9}"
        f"{'recall@10':>11}{'peak GB':>9}"
    )
    for m in methods:
        print(
            f"{LABELS[m]:<20}{cell(result[f'{m}_build_s'], '.1f', 10)}{cell(result[f'{m}_qps'], ',.0f', 12)}"
            f"{cell(result[f'{m}_speedup_qps'], '.1f', 8)}{cell(result.get(f'{m}_speedup_exact'), '.1f', 9)}{cell(result[f'{m}_single_query_ms'], '.3f', 11)}"
            f"{cell(result[f'{m}_single_query_p95_ms'], '.3f', 9)}{cell(result[f'{m}_recall_at_10'], '.4f', 11)}"
            f"{cell(result[f'{m}_peak_rss_gb'], '.2f', 9)}"
        )
    if result.get("exact_best_qps"):
        print(f"fastest exact search: {LABELS[result['exact_best_method']]}, {result['exact_best_qps']:,.1f} queries/s")
        scann_exact = result.get("scann_speedup_exact")
        if scann_exact is not None:
            print(
                f"ScaNN / fastest exact queries/s: {scann_exact:.1f}x (target >= {EXACT_SPEEDUP_TARGET:.0f}x at "
                f"recall@10 >= {RECALL_TARGET}, and ahead of FAISS's best, {result['faiss_best_method']}): "
                f"{'met' if result['scann_exact_target_met'] else 'NOT met'}"
            )
    if result["speedup_qps"] is not None:
        print(
            f"ScaNN / BruteForce queries/s: {result['speedup_qps']:.1f}x (target >= {SPEEDUP_TARGET:.0f}x at recall@10 "
            f">= {RECALL_TARGET}): {'met' if result['target_met'] else 'NOT met'}"
        )
