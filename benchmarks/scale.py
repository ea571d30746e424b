#!/usr/bin/env python
"""How the chain's cost grows with the data: notebooks 01-09 on synthetic sets in ML-25M's shape.

    python benchmarks/scale.py [--sizes 1000000 5000000 25000000] [--params params/ml-25m.yaml]

For each size: ML-25M's CSV files written by `synthetic.generate_synthetic_csv` (cached under
data/scale/; writing 25M ratings takes about 10 minutes and is not chain time), with ML-25M's
catalogue (62,423 movies) and its mean of 154 ratings per user, so the users grow with the
ratings; then `run_all.py --until 09` with the given params reading them as `dataset: ml-25m`.
Each notebook's wall time comes from the run manifest, its kernel's peak RSS from its
metrics.json (`kernel_peak_rss_gb`). Writes benchmarks/results/scale.json
({"sizes": [{"n_ratings", "chain_wall_s", "notebooks": {name: {"wall_s", "peak_rss_gb"}}}],
"exponents": {name: growth exponent between the two largest sizes}}) and a log-log figure
benchmarks/results/scale.png. Run it alone: another job on the two cores makes the timings meaningless.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from recsys.core.io import write_json
from recsys.data.movielens import DATASETS
from recsys.runs import machine
from recsys.runs.provenance import git_commit

ML25M = DATASETS["ml-25m"]
RATINGS_PER_USER = ML25M.n_ratings / ML25M.n_users  # 153.8
SEED = 42
CHAIN_TARGET_S, KERNEL_TARGET_GB = 30 * 60, 8.0  # issue 27's targets at 25M ratings: chain 01-09, each kernel


def synthetic_folder(n_ratings: int, root: Path) -> Path:
    """The cached synthetic set of `n_ratings` ratings in ML-25M's format and shape (written if absent)."""
    from recsys.data.synthetic import generate_synthetic_csv

    folder = root / f"ml-25m-shape-{n_ratings}"
    if not all((folder / name).is_file() for name in ML25M.files.values()):
        n_users = max(1, round(n_ratings / RATINGS_PER_USER))
        started = time.perf_counter()
        generate_synthetic_csv(folder, n_users, ML25M.n_movies, n_ratings, 16, 0.6, SEED)
        print(f"wrote {n_ratings:,} ratings of {n_users:,} users in {time.perf_counter() - started:.0f} s: {folder}")
    return folder


def run_chain(folder: Path, params: Path, run_name: str, artifacts_dir: Path, until: str, reuse: bool) -> dict:
    """Run the chain on `folder` in a fresh process; return its size entry for scale.json.

    With `reuse`, a finished run of the same name on the same folder with the same params (every
    notebook up to `until` ok) is read instead of run again.
    """
    run_dir = artifacts_dir / run_name
    command = [sys.executable, str(ROOT / "run_all.py"), "--params", str(params), "-p", "dataset=ml-25m"]
    command += ["-p", f"data_dir={folder}", "--run-name", run_name, "--until", until]
    command += ["--artifacts-dir", str(artifacts_dir)]
    if not (reuse and _finished(run_dir, folder, params, until)):
        code = subprocess.call(command, cwd=ROOT)
        if code != 0:
            raise SystemExit(f"run_all.py exited {code} on {folder}: see {run_dir / 'reports'}")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    info = json.loads((run_dir / "01_preprocess" / "metrics.json").read_text())
    notebooks = {}
    for entry in manifest["notebooks"]:
        metrics = json.loads((run_dir / entry["name"] / "metrics.json").read_text())
        notebooks[entry["name"]] = {"wall_s": entry["wall_s"], "peak_rss_gb": metrics["kernel_peak_rss_gb"]}
    return {
        "n_ratings": info["n_ratings"] + info["n_foldin_ratings"],
        "n_users": info["n_users"] + info["n_foldin_users"],
        "n_movies": info["n_movies_listed"],
        "chain_wall_s": sum(n["wall_s"] for n in notebooks.values()),
        "notebooks": notebooks,
    }


def _finished(run_dir: Path, folder: Path, params: Path, until: str) -> bool:
    """Whether `run_dir` holds a finished chain up to `until` on `folder` with the params of `params`."""
    from recsys.runs.params import load_params, params_hash, resolve_paths

    path = run_dir / "manifest.json"
    if not path.exists():
        return False
    manifest = json.loads(path.read_text())
    wanted = resolve_paths(load_params(params, ["dataset=ml-25m", f"data_dir={folder}", f"run_name={run_dir.name}"]))
    names = [n["name"] for n in manifest["notebooks"] if n["status"] == "ok"]
    return bool(names) and names[-1].startswith(until) and manifest["params_hash"] == params_hash(wanted)


def growth_exponents(small: dict, large: dict) -> dict[str, float]:
    """Per notebook, the exponent b of wall ~ n^b between two sizes: log(wall ratio) / log(ratings ratio)."""
    ratio = math.log(large["n_ratings"] / small["n_ratings"])
    return {
        name: math.log(large["notebooks"][name]["wall_s"] / small["notebooks"][name]["wall_s"]) / ratio
        for name in large["notebooks"]
        if name in small["notebooks"]
    }


def plot(sizes: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from recsys.core.io import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    n = [s["n_ratings"] for s in sizes]
    for name in sizes[-1]["notebooks"]:
        axes[0].plot(n, [s["notebooks"][name]["wall_s"] for s in sizes], "o-", label=name)
        axes[1].plot(n, [s["notebooks"][name]["peak_rss_gb"] for s in sizes], "o-", label=name)
    axes[0].plot(n, [s["chain_wall_s"] for s in sizes], "k--", lw=2, label="chain 01-09")
    reference = [sizes[0]["chain_wall_s"] * x / n[0] for x in n]
    axes[0].plot(n, reference, ":", color="grey", label="linear from the smallest")
    axes[0].set(xscale="log", yscale="log", xlabel="ratings", ylabel="wall time (s)", title="Wall time per notebook")
    axes[0].axhline(CHAIN_TARGET_S, color="#C44E52", ls="--", label="30 min (target at 25M)")
    axes[1].axhline(KERNEL_TARGET_GB, color="#C44E52", ls="--", label="8 GB (target per kernel)")
    axes[1].set(xscale="log", yscale="log", xlabel="ratings", ylabel="peak RSS (GB)", title="Kernel peak memory")
    axes[1].legend(fontsize=7, loc="upper left")
    axes[0].legend(fontsize=7, loc="upper left")
    save_figure(fig, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000, 25_000_000])
    parser.add_argument("--params", type=Path, default=ROOT / "params" / "ml-25m.yaml")
    parser.add_argument("--data-root", type=Path, default=ROOT / "data" / "scale")
    parser.add_argument("--artifacts-dir", type=Path, default=ROOT / "artifacts")
    parser.add_argument("--until", default="09")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale.json")
    parser.add_argument("--reuse", action="store_true", help="read finished runs of a size instead of rerunning them")
    args = parser.parse_args()
    sizes = []
    for n_ratings in sorted(args.sizes):
        folder = synthetic_folder(n_ratings, args.data_root)
        entry = run_chain(folder, args.params, f"scale-{n_ratings}", args.artifacts_dir, args.until, args.reuse)
        sizes.append(entry)
        print(json.dumps({"n_ratings": n_ratings, "chain_wall_s": round(entry["chain_wall_s"], 1)}), flush=True)
    result = {
        "sizes": sizes,
        "exponents": growth_exponents(sizes[-2], sizes[-1]) if len(sizes) > 1 else {},
        "exponents_between": [s["n_ratings"] for s in sizes[-2:]] if len(sizes) > 1 else [],
        "params": str(args.params.relative_to(ROOT) if args.params.is_relative_to(ROOT) else args.params),
        "catalogue": ML25M.n_movies,
        "commit": git_commit(),
        **machine.describe(),  # platform, CPUs, CPU model: timings compare on one CPU
    }
    write_json(args.out, result)
    plot(sizes, args.out.with_suffix(".png"))
    print(f"{'notebook':<30}" + "".join(f"{s['n_ratings']:>14,}" for s in sizes) + "   exponent")
    for name in sizes[-1]["notebooks"]:
        cells = "".join(
            f"{s['notebooks'][name]['wall_s']:>8.0f}s/{s['notebooks'][name]['peak_rss_gb']:>4.1f}G" for s in sizes
        )
        print(f"{name:<30}{cells}   {result['exponents'].get(name, float('nan')):.2f}")
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
