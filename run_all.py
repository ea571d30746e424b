#!/usr/bin/env python
"""Run the numbered notebooks in order with papermill, then render every one to HTML.

    python run_all.py                                   # every notebook, params/default.yaml
    python run_all.py --params params/smoke.yaml        # another parameter set
    python run_all.py -p dataset=ml-100k -p data_dir=../shared/data/ml-100k --run-name ml100k
    python run_all.py --from 03 --until 04              # a slice (earlier outputs must exist)
    python run_all.py --changed -p rating.l2=0.05       # rerun only what the change reaches (here 04, 05b, 06-10)
    python run_all.py --changed --list -p rating.l2=0.05  # what it would rerun, and why; nothing runs
    python run_all.py --list                            # what each notebook reads and writes

A notebook joins the pipeline by being dropped into notebooks/ as NN_name.ipynb (or NNa_name.ipynb, run
after NN and before the next number, as 05b_multitask): the runner finds
it, injects the parameters its `parameters` cell declares, and lists the artifacts it declares in
its metadata (`recsys.reads`). Outputs land in artifacts/<run_name>/: each notebook's folder, the
executed notebooks, `reports/NN_name.html`, `reports/index.html` and `manifest.json`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import sys
import time
from pathlib import Path

import recsys  # noqa: F401  (sets the TensorFlow/Keras environment for the kernels we start)
from recsys.core.io import PROJECT_ROOT, write_json
from recsys.runs import machine
from recsys.runs.freshness import code_fingerprint, library_fingerprint, rerun_reasons
from recsys.runs.params import ParamsError, load_params, params_hash, resolve_paths
from recsys.runs.provenance import (
    NOT_PARAMS,
    RUNNER_ENV,
    ProvenanceError,
    RunLockedError,
    check_inputs,
    entry_provenance,
    git_commit,
    mark_stale,
    own_params,
    producer,
    run_lock,
)
from recsys.runs.registry import ARTIFACTS, STAGE_NUMBER, stage_number
from recsys.runs.report import build_index, render_notebook_html

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
DEFAULT_ARTIFACTS_DIR = PROJECT_ROOT / "artifacts"
# parameters the runner supplies itself, beside the top-level keys of params/default.yaml
RUNNER_PARAMETERS = ("artifacts_dir",)
PACKAGES = (
    "tensorflow",
    "tf_keras",
    "tensorflow-recommenders",
    "scann",
    "faiss-cpu",
    "numpy",
    "pandas",
    "pyarrow",
    "scipy",
    "lightgbm",
    "scikit-surprise",
    "matplotlib",
    "seaborn",
    "papermill",
    "nbconvert",
    "zipcodes",
    "uszipcode",
    "PyYAML",
)


def _ipc_kernel_manager() -> type:
    """nbclient's kernel manager, talking to the kernel over local IPC sockets instead of TCP.

    The kernel then runs without ipykernel's "Kernel is running over TCP without encryption"
    warning on every notebook, and nothing listens on a network port while a run is going.
    The sockets live in the temporary folder and are removed when the kernel shuts down.
    """
    import tempfile
    import uuid

    from jupyter_client.manager import AsyncKernelManager
    from traitlets import CaselessStrEnum, default

    class IPCKernelManager(AsyncKernelManager):
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)

        @default("ip")
        def _socket_prefix(self) -> str:
            # for IPC, "ip" is the sockets' path prefix: absolute, so the kernel (which runs in
            # notebooks/) and this manager (which removes them at shutdown) mean the same files
            return str(Path(tempfile.gettempdir()) / f"recsys-kernel-{uuid.uuid4().hex[:12]}")

    return IPCKernelManager


class RunnerError(RuntimeError):
    """A problem found before any notebook starts (bad selection, missing inputs, bad notebook)."""


def discover_notebooks(notebooks_dir: Path | None = None) -> list[Path]:
    """The pipeline: every notebooks/NN_*.ipynb (or NNa_*.ipynb, inserted after NN), in number order."""
    notebooks_dir = notebooks_dir or NOTEBOOKS_DIR
    notebooks = sorted(p for p in notebooks_dir.glob("[0-9][0-9]*_*.ipynb") if STAGE_NUMBER.match(p.name))
    numbers = [stage_number(p.name) for p in notebooks]
    duplicated = sorted({n for n in numbers if numbers.count(n) > 1})
    if duplicated:
        raise RunnerError(f"two notebooks share the number(s) {', '.join(duplicated)} in {notebooks_dir}")
    return notebooks


def select_notebooks(notebooks: list[Path], only: list[str] | None, start: str | None, until: str | None) -> list[Path]:
    """Apply --only / --from / --until (numbers such as 4, 04 or 05b, or full stage names), in pipeline order."""
    numbers = [stage_number(p.name) for p in notebooks]

    def number(value: str, flag: str) -> str:
        digits = len(value) - len(value.lstrip("0123456789"))
        if digits == 1:  # "4" means 04, "5b" 05b
            value = "0" + value
        value = stage_number(value + "_") if STAGE_NUMBER.match(value + "_") else value
        if value not in numbers:
            raise RunnerError(f"{flag} {value}: no such notebook; known: {', '.join(numbers)}")
        return value

    if only:
        wanted = {number(v, "--only") for v in only}
        return [p for p, n in zip(notebooks, numbers) if n in wanted]
    first = numbers.index(number(start, "--from")) if start else 0
    last = numbers.index(number(until, "--until")) if until else len(numbers) - 1
    selected = notebooks[first : last + 1]
    if not selected:
        raise RunnerError(f"--from {numbers[first]} --until {numbers[last]} selects no notebook")
    return selected


def notebook_info(path: Path) -> dict:
    """Title, declared parameters and declared inputs/outputs of one notebook."""
    import nbformat
    import papermill

    notebook = nbformat.read(str(path), as_version=4)
    tagged = [c for c in notebook.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        raise RunnerError(f"{path.name} has {len(tagged)} cells tagged 'parameters'; papermill needs exactly one")
    title = next(
        (
            line.lstrip("# ").strip()
            for c in notebook.cells
            if c.cell_type == "markdown"
            for line in c.source.splitlines()
            if line.startswith("#")
        ),
        path.stem,
    )
    meta = notebook.metadata.get("recsys", {})
    stage = path.stem
    return {
        "name": stage,
        "path": path,
        "title": title,
        "parameters": list(papermill.inspect_notebook(str(path))),
        "reads": list(meta.get("reads", [])),
        "writes": [name for name, (writer, _) in ARTIFACTS.items() if writer == stage],
    }


def check_notebooks(infos: list[dict], params: dict, run_dir: Path) -> None:
    """Before anything runs: every declared parameter exists and every input will exist."""
    produced_here = {a for info in infos for a in info["writes"]}
    for info in infos:
        unknown = [p for p in info["parameters"] if p not in params and p not in RUNNER_PARAMETERS]
        if unknown:
            raise RunnerError(
                f"{info['name']} declares parameter(s) {', '.join(unknown)} that are not in "
                "params/default.yaml; add them there (the schema) or rename them"
            )
        for artifact in info["reads"]:
            if artifact not in ARTIFACTS:
                raise RunnerError(f"{info['name']} reads unknown artifact {artifact!r}; known: {', '.join(ARTIFACTS)}")
            writer, filename = ARTIFACTS[artifact]
            if artifact not in produced_here and not (run_dir / writer / filename).exists():
                raise RunnerError(
                    f"{info['name']} needs {artifact} from {writer}, which is neither selected nor "
                    f"present in {run_dir}: run notebook {writer} first (e.g. --from {stage_number(writer)})"
                )


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def print_list(infos: list[dict]) -> None:
    for info in infos:
        print(f"{info['name']}: {info['title']}")
        reads = [f"{a} ({ARTIFACTS[a][0]})" for a in info["reads"]] or ["(raw data)"]
        print(f"    reads:  {', '.join(reads)}")
        print(f"    writes: {', '.join(info['writes'] + ['metrics.json', 'figures'])}")
        print(f"    params: {', '.join(info['parameters'])}")


def execute(info: dict, params: dict, artifacts_dir: Path, executed_dir: Path) -> tuple[str, str | None]:
    """Run one notebook; return (status, error text). The executed copy is kept either way."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    injected = {name: params[name] for name in info["parameters"] if name in params}
    injected["artifacts_dir"] = str(artifacts_dir)
    output = executed_dir / f"{info['name']}.ipynb"
    try:
        papermill.execute_notebook(
            str(info["path"]),
            str(output),
            parameters=injected,
            kernel_name="python3",
            cwd=str(NOTEBOOKS_DIR),
            progress_bar=sys.stderr.isatty(),
            log_output=False,
            kernel_manager_class=_ipc_kernel_manager(),
        )
    except PapermillExecutionError as err:
        last_line = (err.evalue or "").strip().splitlines()[-1:] or [""]
        return "failed", f"cell [{err.exec_count}] ({err.ename}): {last_line[0]}"
    return "ok", None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", help="YAML file with the keys to change (default: params/default.yaml only)")
    parser.add_argument(
        "-p",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one parameter, e.g. -p split.strategy=temporal (repeatable)",
    )
    parser.add_argument("--run-name", help="folder under artifacts/ (default: the params' run_name)")
    parser.add_argument("--only", action="append", metavar="NN", help="run only this notebook (repeatable)")
    parser.add_argument("--from", dest="start", metavar="NN", help="start at this notebook")
    parser.add_argument("--until", metavar="NN", help="stop after this notebook")
    parser.add_argument(
        "--list",
        action="store_true",
        help="print the notebooks and what each reads and writes (with --changed: what would rerun, and why)",
    )
    parser.add_argument(
        "--changed",
        action="store_true",
        help="skip every selected notebook that is up to date (its last run here succeeded with the same "
        "parameters, code and inputs); rerun the rest",
    )
    parser.add_argument("--artifacts-dir", default=str(DEFAULT_ARTIFACTS_DIR), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    overrides = list(args.overrides) + ([f"run_name={args.run_name}"] if args.run_name else [])
    try:
        params = resolve_paths(load_params(args.params, overrides))
        notebooks = discover_notebooks()
        infos = [notebook_info(p) for p in select_notebooks(notebooks, args.only, args.start, args.until)]
        if args.list and not args.changed:
            print_list(infos)
            return 0
        artifacts_dir = Path(args.artifacts_dir).resolve()
        run_dir = artifacts_dir / params["run_name"]
        check_notebooks(infos, params, run_dir)
        versions, library = package_versions(), library_fingerprint()
        for info in infos:
            info["code_hash"] = code_fingerprint(info["path"], library, versions)
        selected = {info["path"]: info for info in infos}  # the others are read only for what they read
        consumed = (
            {a for p in notebooks for a in (selected.get(p) or notebook_info(p))["reads"]} if args.changed else set()
        )
        if args.list:  # with --changed: the plan, and nothing runs
            changed_only(infos, params, run_dir, consumed)
            return 0
    except (ParamsError, RunnerError, ProvenanceError) as err:
        print(f"run_all.py: {err}", file=sys.stderr)
        return 2

    command = "run_all.py " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        with run_lock(run_dir, command) as takeover:
            if takeover:
                print(f"run_all.py: note: {takeover}", file=sys.stderr)
            if args.changed:
                infos = changed_only(infos, params, run_dir, consumed)
                if not infos:
                    print(f"run {params['run_name']}: every selected notebook is up to date in {run_dir}")
                    return 0
                check_notebooks(infos, params, run_dir)
            return _run(infos, notebooks, params, args, artifacts_dir, run_dir, versions)
    except (RunLockedError, ProvenanceError, RunnerError) as err:
        print(f"run_all.py: {err}", file=sys.stderr)
        return 2


def changed_only(infos: list[dict], params: dict, run_dir: Path, consumed: set[str]) -> list[dict]:
    """The selected notebooks that must rerun (`freshness.rerun_reasons`), each printed with its reason or as up to date.

    First, as a run without --changed: what the selection reads from notebooks outside it must have
    been made with the parameters in use (`check_inputs` raises ProvenanceError otherwise), since a
    changed parameter of a notebook outside the selection reaches none of the selection's own.
    """
    manifest_path = run_dir / "manifest.json"
    earlier = json.loads(manifest_path.read_text())["notebooks"] if manifest_path.exists() else []
    entries = {entry["name"]: entry for entry in earlier}
    selected = [info["name"] for info in infos]
    outside = [a for info in infos for a in info["reads"] if producer(a) not in selected]
    check_inputs(entries, outside, {k: v for k, v in params.items() if k not in NOT_PARAMS}, rebuilt=selected)
    stages = [(info["name"], info["parameters"], info["reads"]) for info in infos]
    fingerprints = {info["name"]: info["code_hash"] for info in infos}
    reasons = rerun_reasons(stages, entries, params, fingerprints, run_dir, consumed)
    for name, reason in reasons.items():
        print(f"  {name}: " + ("up to date, skipped" if reason is None else f"reruns: {reason}"))
    last = [entries.get(name, {}).get("wall_s") for name, reason in reasons.items() if reason is not None]
    if last and None not in last:
        print(f"  {len(last)} of {len(reasons)} rerun; their last runs here took {sum(last):,.0f} s")
    return [info for info in infos if reasons[info["name"]] is not None]


def _run(
    infos: list[dict],
    notebooks: list[Path],
    params: dict,
    args: argparse.Namespace,
    artifacts_dir: Path,
    run_dir: Path,
    versions: dict,
) -> int:
    """Execute the selected notebooks while holding the run folder's lock; refuse stale inputs first."""
    manifest_path = run_dir / "manifest.json"
    earlier = json.loads(manifest_path.read_text())["notebooks"] if manifest_path.exists() else []
    earlier = {entry["name"]: entry for entry in earlier}
    selected = [info["name"] for info in infos]
    current = {key: value for key, value in params.items() if key not in NOT_PARAMS}
    # what the selection reads from notebooks it does not rerun must come from these parameters
    check_inputs(
        earlier,
        [artifact for info in infos for artifact in info["reads"] if producer(artifact) not in selected],
        current,
        rebuilt=selected,
    )

    executed_dir, reports_dir = run_dir / "notebooks", run_dir / "reports"
    executed_dir.mkdir(parents=True, exist_ok=True)
    reports_dir.mkdir(parents=True, exist_ok=True)
    commit = git_commit()
    manifest = {
        "run_name": params["run_name"],
        "params": params,
        "params_hash": params_hash(params),
        "params_file": args.params,
        "overrides": args.overrides,
        "packages": versions,
        "git_commit": commit,
        **machine.describe(),  # platform, cpu_count, cpu_model, cpu_isa
        "started": now(),
        "ended": None,
        "wall_s": None,
        "notebooks": [],
    }
    # a partial run (--from/--only/--until) keeps what an earlier run of this folder recorded for
    # the other notebooks, so the index still links every report of the run and the provenance
    # of what the selection reads stays on record
    for path in notebooks:
        if path.stem in selected:
            manifest["notebooks"].append({"name": path.stem, "status": "pending", "wall_s": None})
        elif path.stem in earlier:
            manifest["notebooks"].append({**earlier[path.stem], "earlier_run": True})
    entries = {entry["name"]: entry for entry in manifest["notebooks"]}
    write_json(manifest_path, manifest)
    print(f"run {params['run_name']} -> {run_dir}  (params hash {manifest['params_hash']})")
    run_start = time.perf_counter()
    previous_env = os.environ.get(RUNNER_ENV)
    os.environ[RUNNER_ENV] = str(os.getpid())  # the kernels leave the checks and the records to the runner
    try:
        exit_code = _execute_all(infos, params, artifacts_dir, run_dir, manifest, entries, commit)
    finally:
        if previous_env is None:
            os.environ.pop(RUNNER_ENV, None)
        else:
            os.environ[RUNNER_ENV] = previous_env
    stale = mark_stale(manifest["notebooks"])
    if stale:
        print(
            f"run_all.py: note: {', '.join(stale)} read outputs that this run has replaced; "
            f"rerun them (--from {stage_number(stale[0])}) before reading their results",
            file=sys.stderr,
        )
    cpus = machine.mixed_cpus(manifest["notebooks"])
    if cpus:
        print(
            "run_all.py: note: this run's notebooks ran on different CPUs, whose kernels sum floats in other orders, "
            "so its numbers may differ in their last digits from a run on one machine (compare runs made on one):\n"
            + "\n".join(f"  {', '.join(names)}: {cpu}" for cpu, names in cpus.items()),
            file=sys.stderr,
        )
    manifest.update(ended=now(), wall_s=round(time.perf_counter() - run_start, 2))
    write_json(manifest_path, manifest)
    index = build_index(run_dir, manifest)
    print(f"reports: {index}")
    return exit_code


def _execute_all(
    infos: list[dict],
    params: dict,
    artifacts_dir: Path,
    run_dir: Path,
    manifest: dict,
    entries: dict,
    commit: str | None,
) -> int:
    """Run the notebooks in order, recording each one's status, timings and provenance; stop at a failure."""
    executed_dir, reports_dir = run_dir / "notebooks", run_dir / "reports"
    manifest_path = run_dir / "manifest.json"
    for position, info in enumerate(infos, start=1):
        entry = entries[info["name"]]
        print(f"[{position}/{len(infos)}] {info['name']}: {info['title']} ...", flush=True)
        entry["started"] = now()
        start = time.perf_counter()
        status, error = execute(info, params, artifacts_dir, executed_dir)
        entry.update(status=status, error=error, wall_s=round(time.perf_counter() - start, 2), ended=now())
        if status == "ok":
            own = own_params(params, info["parameters"])
            entry.update(entry_provenance(own, info["reads"], entries, "run_all.py", commit))
            entry["code_hash"] = info["code_hash"]  # what `--changed` compares (freshness.code_fingerprint)
        render_notebook_html(executed_dir / f"{info['name']}.ipynb", reports_dir / f"{info['name']}.html")
        print(f"      {status} in {entry['wall_s']:.1f} s -> reports/{info['name']}.html", flush=True)
        write_json(manifest_path, manifest)
        if status != "ok":
            print(
                f"run_all.py: notebook {info['name']} failed at {error}\n"
                f"  the traceback is in {reports_dir / (info['name'] + '.html')}",
                file=sys.stderr,
            )
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
