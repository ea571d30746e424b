"""Turn a run into what a reviewer reads: one HTML page per executed notebook and the run's index.html."""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path
from typing import Any

from recsys.core.io import atomic_path, save_figure
from recsys.runs import machine
from recsys.runs.registry import ARTIFACTS, MANIFEST, read_metrics


def render_notebook_html(notebook_path: str | os.PathLike, html_path: str | os.PathLike) -> Path:
    """Render an executed notebook to a self-contained HTML file (figures are embedded as data URIs)."""
    import nbformat
    from nbconvert import HTMLExporter

    notebook = nbformat.read(str(notebook_path), as_version=4)
    exporter = HTMLExporter(template_name="lab")
    body, _ = exporter.from_notebook_node(notebook)
    with atomic_path(html_path, suffix=".html") as tmp:
        tmp.write_text(body, encoding="utf-8")
    return Path(html_path)


def _format_value(value: Any) -> str:
    """A metric as the index shows it: digits grouped only in counts of five digits or more.

    Four-digit numbers stay ungrouped, so a year reads 1992, not 1,992 (metrics.json holds years,
    epochs and hours beside counts, and nothing in a key says which is which).
    """
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    return html.escape(str(value))


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 70rem;
       color: #1f2328; line-height: 1.45; padding: 0 1rem; }
h1 { margin-bottom: .2rem; } .sub { color: #59636e; margin-top: 0; }
table { border-collapse: collapse; margin: .6rem 0 1.6rem; font-size: .92rem; }
th, td { border-bottom: 1px solid #d1d9e0; padding: .3rem .7rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.ok { color: #1a7f37; font-weight: 600; } .failed { color: #d1242f; font-weight: 600; }
.pending { color: #9a6700; } details { margin: 1rem 0; } pre { background: #f6f8fa; padding: .8rem; overflow-x: auto; }
.metrics { columns: 2; column-gap: 2rem; } .metrics table { break-inside: avoid; }
"""


# the K = 10 list metrics every top-k strategy records as <metric>_<strategy or setting>
LIST_METRICS = ("recall_at_10", "ndcg_at_10", "coverage_at_10", "novelty", "intra_list_diversity", "gini")


def list_metrics(results: Any, extra: tuple[str, ...] = ()) -> dict[str, float]:
    """metrics.json entries `<metric>_<strategy>` of a results table, as `strategy_table` reads them back.

    Args:
        results: a DataFrame with one row per strategy (or setting), named by its index, and a
            column per metric.
        extra: columns to record beside the K=10 list metrics (e.g. a stage's own measure).
    """
    return {f"{key}_{name}": float(row[key]) for name, row in results.iterrows() for key in (*LIST_METRICS, *extra)}


def _stages(run_dir: Path) -> list[str]:
    """The run's notebook folders that hold a metrics.json, in notebook order."""
    return sorted(p.name for p in Path(run_dir).iterdir() if (p / "metrics.json").is_file())


def rating_table(run_dir: Path) -> list[tuple[str, float, float]]:
    """(model, test RMSE, test MAE) of every rating model of the run: each `rmse_<model>` with its `mae_<model>`."""
    rows = []
    for stage in _stages(run_dir):
        metrics = read_metrics(run_dir, stage)
        for key, value in metrics.items():
            name = key.removeprefix("rmse_")
            if key.startswith("rmse_") and f"mae_{name}" in metrics:
                rows.append((name, value, metrics[f"mae_{name}"]))
    return sorted(rows, key=lambda row: row[1])


def strategy_table(run_dir: Path) -> list[dict]:
    """One row per top-k list of the run (test split, K = 10): every `recall_at_10_<strategy>` with its stage."""
    rows = []
    for stage in _stages(run_dir):
        metrics = read_metrics(run_dir, stage)
        settings = [
            k.removeprefix("recall_at_10_")
            for k in metrics
            if k.startswith("recall_at_10_")
            and not k.startswith("recall_at_10_foldin")  # not test-split lists
            and not k.startswith("recall_at_10_cold")  # rankings of the new movies only
            and "_minus_" not in k  # paired differences and their intervals, not lists
            and not k.endswith("_std")  # a list's spread
        ]
        for setting in settings:
            rows.append(
                {"stage": stage, "strategy": setting, **{m: metrics.get(f"{m}_{setting}") for m in LIST_METRICS}}
            )
    return rows


def _number_cell(value: float | None) -> str:
    return '<td class="num">–</td>' if value is None else f'<td class="num">{value:.4f}</td>'


SIMULATION_METRICS = ("accepted_per_user", "coverage_final", "gini_final", "accepted_popularity")
SIMULATION_VERDICTS = ("accepted_per_user", "coverage_final")  # each policy against the served list
SIMULATION_FIGURE = "coverage_over_rounds.png"  # written by the simulation notebook beside its metrics.json


def simulation_table(run_dir: Path) -> tuple[str, list[dict]] | None:
    """(stage, one row per policy) of the run's closed-loop simulation: SIMULATION_METRICS (means over the seeds and
    hidden models) and, against the served list, the verdicts on accepted movies and coverage.

    A simulation's metrics are the `gini_final_<policy>` keys (one per policy) and their companions.
    """
    for stage in _stages(run_dir):
        metrics = read_metrics(run_dir, stage)
        policies = [
            k.removeprefix("gini_final_")
            for k in metrics
            if k.startswith("gini_final_") and "_under_" not in k and "_minus_" not in k
        ]
        if policies:
            return stage, [
                {
                    "policy": p,
                    **{m: metrics.get(f"{m}_{p}") for m in SIMULATION_METRICS},
                    **{f"{m} vs served": metrics.get(f"{m}_{p}_minus_served_verdict", "") for m in SIMULATION_VERDICTS},
                }
                for p in policies
            ]
    return None


def _simulation_html(run_dir: Path, reports_dir: Path) -> str:
    found = simulation_table(run_dir)
    if found is None:
        return ""
    stage, rows = found
    verdict_columns = [f"{m} vs served" for m in SIMULATION_VERDICTS]
    body = "".join(
        f"<tr><td>{html.escape(r['policy'])}</td>"
        + "".join(_number_cell(r[c]) for c in SIMULATION_METRICS)
        + "".join(f"<td>{html.escape(str(r[c]))}</td>" for c in verdict_columns)
        + "</tr>"
        for r in rows
    )
    metrics = read_metrics(run_dir, stage)
    part = (
        f"<h3>Closed-loop simulation ({html.escape(stage)}): every policy in its own world over the rounds; "
        f"means over {metrics.get('n_seeds')} seeds under each of {metrics.get('n_hidden_models')} hidden "
        "preference models; a verdict only where the paired 95% interval excludes 0 under every hidden model</h3>"
        f"<table><tr><th>policy</th>{''.join(f'<th>{c}</th>' for c in [*SIMULATION_METRICS, *verdict_columns])}</tr>"
        f"{body}</table>"
    )
    figure = run_dir / stage / SIMULATION_FIGURE
    if figure.exists():
        copy = reports_dir / f"summary_{SIMULATION_FIGURE}"
        with atomic_path(copy, suffix=".png") as tmp:
            tmp.write_bytes(figure.read_bytes())
        part += f'<img src="{copy.name}" alt="Catalogue coverage over rounds, every policy" style="max-width: 100%">'
    return part


def plot_tradeoff(
    ax: Any, rows: list[dict], title: str = "Accuracy against catalogue coverage (test split, K = 10)"
) -> None:
    """Recall@10 against coverage@10 on `ax`, one point per strategy/setting, a line per stage.

    Strategies that give the same lists (e.g. σ = 0 noise and retrieval alone) sit on one point and
    share one label ("a = b"); adjustText moves the labels apart so none hides another.

    Args:
        rows: dicts with "stage", "strategy" (the label), "recall_at_10" and "coverage_at_10".
    """
    from adjustText import adjust_text

    points = [r for r in rows if r["recall_at_10"] is not None and r["coverage_at_10"] is not None]
    stages = list(dict.fromkeys(r["stage"] for r in points))
    for stage in stages:
        mine = [r for r in points if r["stage"] == stage]
        line = ax.plot([r["coverage_at_10"] for r in mine], [r["recall_at_10"] for r in mine], "o", label=stage)[0]
        # a sweep ("sigma_0.1", "sigma_0.2", ...) is joined in the order of its setting; other strategies are not
        sweeps: dict[str, list[tuple[float, dict]]] = {}
        for r in mine:
            match = re.fullmatch(r"(.*?)_?(-?\d+(?:\.\d+)?)", str(r["strategy"]))
            if match:
                sweeps.setdefault(match.group(1), []).append((float(match.group(2)), r))
        for sweep in sweeps.values():
            if len(sweep) > 1:
                sweep.sort(key=lambda item: item[0])
                ax.plot(
                    [r["coverage_at_10"] for _, r in sweep],
                    [r["recall_at_10"] for _, r in sweep],
                    "-",
                    color=line.get_color(),
                    alpha=0.7,
                )
    labels: dict[tuple[float, float], list[str]] = {}
    for r in points:
        labels.setdefault((round(r["coverage_at_10"], 4), round(r["recall_at_10"], 4)), []).append(r["strategy"])
    texts = [ax.text(x, y, " = ".join(dict.fromkeys(names)), fontsize=7) for (x, y), names in labels.items()]
    ax.set(title=title, xlabel="coverage@10", ylabel="Recall@10")
    ax.grid(alpha=0.3)
    if len(stages) > 1:
        ax.legend(fontsize=8)
    adjust_text(texts, ax=ax, arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.5})


def tradeoff_figure(rows: list[dict], path: Path) -> Path | None:
    """The run summary's figure: `plot_tradeoff` of every top-10 strategy of the run, saved as PNG."""
    if not any(r["recall_at_10"] is not None and r["coverage_at_10"] is not None for r in rows):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    plot_tradeoff(ax, rows)
    save_figure(fig, path)
    plt.close(fig)
    return path


SPLIT_COMPARISON_MODELS = ("popularity", "ease", "two_tower", "sequential")
RETRIEVAL_METRICS = ("recall_at_10", "ndcg_at_10", "recall_at_100")


def split_comparison(run_dir: Path) -> list[dict]:
    """The retrieval results of this run and its sibling runs on the same data with another split strategy.

    Runs are the folders beside `run_dir` with a manifest.json and the metrics of the stage that
    writes the retrieval models (found in the artifact registry);
    "the same data" is the same dataset, data_dir, seed, split settings but the strategy, and
    retrieval.min_rating. Empty unless at least two split
    strategies are present, so a lone run shows no comparison.

    Returns:
        One dict per run (this one first): run, strategy, test_users and test_ratings (what each
        strategy evaluates: `global_temporal` scores only users with ratings before its cut-offs),
        and `<metric>_<model>` for RETRIEVAL_METRICS x SPLIT_COMPARISON_MODELS.
    """

    retrieval_stage = ARTIFACTS["retrieval_model"][0]
    split_stage = ARTIFACTS["interactions"][0]

    def describe(folder: Path) -> dict | None:
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            return None
        try:
            params = json.loads(manifest_path.read_text())["params"]
            metrics = read_metrics(folder, retrieval_stage)
            split_metrics = read_metrics(folder, split_stage)
        except (OSError, ValueError, KeyError):
            return None  # a run being written or a broken folder: not comparable
        if not metrics:
            return None
        split = {key: value for key, value in params.get("split", {}).items() if key != "strategy"}
        positives = params.get("retrieval", {}).get("min_rating")
        same_data = (params.get("dataset"), params.get("data_dir"), params.get("seed"), split, positives)
        values = {
            f"{m}_{model}": metrics.get(f"{m}_{model}") for m in RETRIEVAL_METRICS for model in SPLIT_COMPARISON_MODELS
        }
        held_out = {"test_users": split_metrics.get("n_test_users"), "test_ratings": split_metrics.get("n_test")}
        strategy = params.get("split", {}).get("strategy")
        return {"run": folder.name, "strategy": strategy, "data": same_data, **held_out, **values}

    this = describe(Path(run_dir))
    if this is None:
        return []
    others = [describe(folder) for folder in sorted(Path(run_dir).parent.iterdir()) if folder != Path(run_dir)]
    rows = [this] + [row for row in others if row is not None and row["data"] == this["data"]]
    return rows if len({row["strategy"] for row in rows}) > 1 else []


def _split_comparison_html(run_dir: Path) -> str:
    rows = split_comparison(run_dir)
    if not rows:
        return ""
    header = "".join(
        f"<th>{html.escape(model)}<br>{html.escape(m)}</th>"
        for m in RETRIEVAL_METRICS
        for model in SPLIT_COMPARISON_MODELS
    )
    body = "".join(
        f"<tr><td>{html.escape(row['run'])}</td><td>{html.escape(str(row['strategy']))}</td>"
        + "".join(
            '<td class="num">–</td>' if row[key] is None else f'<td class="num">{_format_value(row[key])}</td>'
            for key in ("test_users", "test_ratings")
        )
        + "".join(
            '<td class="num">–</td>'
            if row[f"{m}_{model}"] is None
            else f'<td class="num">{row[f"{m}_{model}"]:.4f}</td>'
            for m in RETRIEVAL_METRICS
            for model in SPLIT_COMPARISON_MODELS
        )
        + "</tr>"
        for row in rows
    )
    return (
        "<h3>Retrieval under each split strategy (runs on the same data and seed; test split, full catalogue, "
        "train and val movies excluded)</h3>"
        "<p>random, temporal and leave_last_out hold out a part of each user's ratings (temporal: the latest, "
        "so train holds other users' later ratings); global_temporal holds out the ratings after two cut-off "
        "times shared by all users, so train holds nothing later, and scores only the users with a rating "
        "before the first.</p>"
        f"<table><tr><th>run</th><th>split</th><th>test users</th><th>test ratings</th>{header}</tr>{body}</table>"
    )


def _summary_html(run_dir: Path, reports_dir: Path) -> str:
    ratings = rating_table(run_dir)
    strategies = strategy_table(run_dir)
    parts = []
    if ratings:
        body = "".join(
            f'<tr><td>{html.escape(n)}</td><td class="num">{r:.4f}</td><td class="num">{m:.4f}</td></tr>'
            for n, r, m in ratings
        )
        parts.append(
            "<h3>Rating prediction (test split; chosen on val, refitted on train + val)</h3>"
            f"<table><tr><th>model</th><th>RMSE</th><th>MAE</th></tr>{body}</table>"
        )
    if strategies:
        body = "".join(
            f"<tr><td>{html.escape(r['stage'])}</td><td>{html.escape(r['strategy'])}</td>"
            + "".join(_number_cell(r[m]) for m in LIST_METRICS)
            + "</tr>"
            for r in strategies
        )
        header = "".join(f"<th>{m}</th>" for m in LIST_METRICS)
        parts.append(
            "<h3>Top-10 lists: models and exploration strategies (test split, K = 10, train and val "
            "movies excluded)</h3>"
            f"<table><tr><th>notebook</th><th>strategy / setting</th>{header}</tr>{body}</table>"
        )
        figure = tradeoff_figure(strategies, reports_dir / "summary_tradeoff.png")
        if figure is not None:
            parts.append(
                f'<img src="{figure.name}" alt="Recall@10 against coverage@10 for every strategy" '
                'style="max-width: 100%">'
            )
    comparison = _split_comparison_html(run_dir)
    if comparison:
        parts.append(comparison)
    simulation = _simulation_html(run_dir, reports_dir)
    if simulation:
        parts.append(simulation)
    return "<h2>Comparison across the run</h2>" + "".join(parts) if parts else ""


def _provenance_cell(entry: dict) -> str:
    """What produced a notebook's outputs: its params hash, expandable to params, inputs, commit and runner."""
    if "params_hash" not in entry:
        return ""
    inputs = "".join(
        f"<li>{html.escape(artifact)} &larr; {html.escape(record['producer'])} "
        f"<code>{html.escape(str(record['lineage_hash']))}</code></li>"
        for artifact, record in entry.get("inputs", {}).items()
    )
    params = html.escape(json.dumps(entry.get("params", {}), indent=1, sort_keys=True))
    return (
        f"<details><summary><code>{html.escape(entry['params_hash'])}</code></summary>"
        f"ran by {html.escape(str(entry.get('ran_by')))} at git <code>{html.escape(str(entry.get('git_commit')))}</code>; "
        f"lineage <code>{html.escape(str(entry.get('lineage_hash')))}</code>"
        f"<ul>{inputs or '<li>no inputs from other notebooks</li>'}</ul><pre>{params}</pre></details>"
    )


def build_index(run_dir: str | os.PathLike, manifest: dict) -> Path:
    """Write `reports/index.html`: each notebook's status and report link, its key metrics, the manifest.

    Args:
        run_dir: the run folder (artifacts/<run_name>).
        manifest: the run's manifest (see run_all.py), already holding per-notebook status and timings.

    Returns:
        The path of the written index.html.
    """
    run_dir = Path(run_dir)
    reports_dir = run_dir / "reports"
    rows = []
    for entry in manifest["notebooks"]:
        name = entry["name"]
        report = reports_dir / f"{name}.html"
        by_hand = entry.get("ran_by") == "jupyter"  # its report, if any, is of an earlier run_all.py execution
        linked = report.exists() and not by_hand
        link = f'<a href="{html.escape(report.name)}">{html.escape(name)}</a>' if linked else html.escape(name)
        status = entry.get("status", "pending")
        wall = f"{entry['wall_s']:.1f}" if entry.get("wall_s") is not None else ""
        note = "(from an earlier run of this folder) " if entry.get("earlier_run") else ""
        if by_hand:
            note += "run by hand in Jupyter (its executed notebook is where it ran). "
        if entry.get("stale"):
            note += f"STALE: {entry['stale']}; rerun it before reading its results. "
        error = html.escape(note + (entry.get("error") or ""))
        rows.append(
            f'<tr><td>{link}</td><td class="{status}">{status}</td><td class="num">{wall}</td>'
            f"<td>{_provenance_cell(entry)}</td><td>{error}</td></tr>"
        )

    metric_tables = []
    for entry in manifest["notebooks"]:
        metrics = read_metrics(run_dir, entry["name"])
        if not metrics:  # not run (yet)
            continue
        body = "".join(
            f'<tr><td>{html.escape(k)}</td><td class="num">{_format_value(v)}</td></tr>' for k, v in metrics.items()
        )
        metric_tables.append(f"<table><tr><th colspan=2>{html.escape(entry['name'])}</th></tr>{body}</table>")

    manifest_text = html.escape(json.dumps(manifest, indent=2, sort_keys=True))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Run {html.escape(manifest["run_name"])}</title>
<style>{_STYLE}</style></head><body>
<h1>Run <code>{html.escape(manifest["run_name"])}</code></h1>
<p class="sub">dataset <b>{html.escape(str(manifest["params"].get("dataset")))}</b> ·
params hash <code>{manifest["params_hash"]}</code> · git <code>{html.escape(str(manifest.get("git_commit")))}</code> ·
CPU {html.escape(machine.run_cpus(manifest))} ·
started {html.escape(manifest["started"])} · total {manifest.get("wall_s", 0):.1f} s</p>
<h2>Notebooks</h2>
<table><tr><th>report</th><th>status</th><th>wall s</th><th>error</th></tr>{"".join(rows)}</table>
{_summary_html(run_dir, reports_dir)}
<h2>Key metrics</h2>
<p class="sub">From each notebook's metrics.json; every table in the reports states its split and K.</p>
<div class="metrics">{"".join(metric_tables) or "<p>No metrics yet.</p>"}</div>
<h2>Manifest</h2>
<details><summary>Parameters, package versions and timings (manifest.json)</summary>
<pre>{manifest_text}</pre></details>
</body></html>
"""
    with atomic_path(reports_dir / "index.html", suffix=".html") as tmp:
        tmp.write_text(page, encoding="utf-8")
    return reports_dir / "index.html"
