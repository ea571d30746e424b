"""Where every artifact of a run lives, and how it is written: atomically, never half-done."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _umask() -> int:
    """The process's umask (read without changing it where Linux allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore
    os.umask(mask)
    return mask


def _normal_mode(path: Path, directory: bool) -> None:
    # mkstemp and mkdtemp create 0600 files and 0700 folders; what lands in a run folder gets the
    # modes of any other new file (0644 / 0755 under the usual umask), so colleagues and a web
    # server can read the reports.
    path.chmod((0o777 if directory else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_path(final_path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `final_path`; rename it into place only if the block succeeds.

    A reader never sees a partial file: on an exception (or an interrupt) the temporary file is
    removed and `final_path` keeps its previous content, if any.
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final_path.name}.", suffix=suffix + ".tmp", dir=final_path.parent)
    os.close(fd)
    tmp_path = Path(tmp_name)
    try:
        yield tmp_path
        if tmp_path.exists():  # a writer may have replaced it; it keeps its own mode then
            _normal_mode(tmp_path, directory=False)
        os.replace(tmp_path, final_path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(final_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside `final_dir`; it replaces `final_dir` only if the block succeeds.

    The old folder (if any) is moved aside before the new one is renamed into place and removed
    after, so a reader sees either the old or the new folder whole, never a mix.
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".tmp", dir=final_dir.parent))
    try:
        _normal_mode(tmp, directory=True)
        yield tmp
        old = None
        if final_dir.exists():  # os.replace cannot overwrite a non-empty folder
            old = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".old", dir=final_dir.parent))
            os.replace(final_dir, old / final_dir.name)
        os.replace(tmp, final_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_model_folder(model: Any, encoder: Any, folder: str | os.PathLike, state: dict) -> Path:
    """Save a Keras model's weights, `state` (config etc.) and its FeatureEncoder in one folder, atomically.

    Reloading rebuilds the model's class from `state` and loads the weights (see `read_model_folder`):
    the saved model is the same class as the trained one, not a generic SavedModel.
    """
    with atomic_dir(folder) as tmp:
        model.save_weights(str(tmp / "weights"))
        (tmp / "model.json").write_text(json.dumps({**state, "cardinalities": encoder.cardinalities()}, indent=2))
        encoder.save(tmp / "encoder.json")
    return Path(folder)


def read_model_folder(folder: str | os.PathLike) -> tuple[dict, Any, str]:
    """(state, FeatureEncoder, weights path) of a folder written by `save_model_folder`.

    Raises:
        FileNotFoundError: no saved model there (`Run.require` names the notebook that writes it).
    """
    from recsys.encoding import FeatureEncoder

    folder = Path(folder)
    if not (folder / "model.json").exists():
        raise FileNotFoundError(f"{folder} holds no saved model (model.json missing): save one with save_model_folder")
    return (
        json.loads((folder / "model.json").read_text()),
        FeatureEncoder.load(folder / "encoder.json"),
        str(folder / "weights"),
    )


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")
    return Path(path)


def _json_default(value: Any) -> Any:
    # numpy scalars and paths show up in metrics and manifests
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable: {value!r}")


class MissingArtifactError(FileNotFoundError):
    """An input of this notebook does not exist yet: an earlier notebook has to run first."""


# Every artifact a notebook hands to a later one: name -> (the notebook that writes it, file name).
# Notebooks read and write them through `Run.path` / `Run.require`, never by spelling out paths.
ARTIFACTS: dict[str, tuple[str, str]] = {
    "users": ("01_preprocess", "users.parquet"),
    "movies": ("01_preprocess", "movies.parquet"),
    "interactions": ("01_preprocess", "interactions.parquet"),  # every user but the fold-in ones
    "foldin_interactions": ("01_preprocess", "foldin_interactions.parquet"),  # kept out of every model
    "data_quality": ("01_preprocess", "data_quality.parquet"),
    "dataset_info": ("01_preprocess", "dataset.json"),  # the release: rating scale, feature groups
    "baseline_results": ("03_baselines", "results.parquet"),
    "ranking_model": ("04_two_tower_ranking", "ranking_model"),  # refitted on train + val
    "ranking_model_train": ("04_two_tower_ranking", "ranking_model_train"),  # fitted on train only
    "ranking_jobs": ("04_two_tower_ranking", "distributed_jobs"),  # distribute.strategy multi_worker: jobs, logs
    "feature_store": ("06_retrieval_ranking", "feature_store"),
    "two_stage_candidates": ("06_retrieval_ranking", "candidates.parquet"),
    # the retrieval model folder holds its own encoder.json (a refit on train + val has its own vocabularies)
    "retrieval_model": ("05_retrieval", "retrieval_model"),
    "retrieval_jobs": ("05_retrieval", "distributed_jobs"),  # distribute.strategy multi_worker: jobs, logs
    "movie_embeddings": ("05_retrieval", "movie_embeddings.npy"),
    "movie_embedding_ids": ("05_retrieval", "movie_embedding_ids.npy"),
    "bruteforce_index": ("05_retrieval", "bruteforce_index"),
    "scann_index": ("05_retrieval", "scann_index"),
    "ease_model": ("05_retrieval", "ease_model"),
    "sequential_model": ("05_retrieval", "sequential_model"),
    "sequential_movie_embeddings": ("05_retrieval", "sequential_movie_embeddings.npy"),
    "sequential_bruteforce_index": ("05_retrieval", "sequential_bruteforce_index"),
    "sequential_scann_index": ("05_retrieval", "sequential_scann_index"),
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


class Run:
    """One run's folder, `artifacts/<run_name>/`, with a subfolder per notebook.

    A notebook opens its run with its own name and parameter values,
    `Run(artifacts_dir, run_name, STAGE, {"seed": seed, ...})`. Run by run_all.py, the runner has
    already checked its inputs and records its provenance. Run by hand in Jupyter, the notebook
    does both itself (recsys.provenance): `require` refuses an input produced with other values
    of these parameters (or a stale or mixed one), and `write_metrics` records the notebook's
    entry in manifest.json, so the run folder keeps telling what produced each output.

    Args:
        artifacts_dir: the root holding every run (the project's `artifacts/` by default).
        run_name: this run's folder name.
        stage: the notebook opening the run (its file name without .ipynb), if any.
        params: that notebook's parameter values (its parameters cell, without run_name and artifacts_dir).
    """

    def __init__(
        self, artifacts_dir: str | os.PathLike, run_name: str, stage: str | None = None, params: dict | None = None
    ):
        self.dir = Path(artifacts_dir).resolve() / run_name
        self.name = run_name
        self.stage, self.params = stage, params
        self._read: list[str] = []
        self._by_hand = None
        if stage is not None and params is not None:
            from recsys import provenance

            self._by_hand = provenance.open_by_hand(self.dir, stage)

    def __repr__(self) -> str:
        return f"Run({str(self.dir)!r})"

    def stage_dir(self, stage: str) -> Path:
        """The folder of one notebook's outputs (created on first use)."""
        folder = self.dir / stage
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def path(self, artifact: str) -> Path:
        """Where `artifact` (a key of ARTIFACTS) lives in this run, for writing."""
        stage, filename = _registered(artifact)
        return self.stage_dir(stage) / filename

    def require(self, artifact: str) -> Path:
        """The path of an input artifact, or a MissingArtifactError saying which notebook to run first."""
        stage, filename = _registered(artifact)
        path = self.dir / stage / filename
        if not path.exists():
            raise MissingArtifactError(
                f"{path} does not exist: run notebook {stage} first for run {self.name!r} "
                f"(python run_all.py --run-name {self.name} --until {stage[:2]})"
            )
        if self._by_hand is not None:
            from recsys import provenance

            provenance.check_by_hand(self.dir, artifact, self.params)
        self._read.append(artifact)
        return path

    # ---- metrics and figures -----------------------------------------------------------------
    def write_metrics(self, stage: str, metrics: dict) -> Path:
        """Write a notebook's flat metrics.json (numbers and short strings) atomically.

        It adds `kernel_peak_rss_gb`: the peak resident memory of this process so far (the
        notebook's kernel, whose last step this is), in GB of 10^9 bytes. A notebook run by hand
        records its manifest entry here (its last step).
        """
        for key, value in metrics.items():
            if isinstance(value, (dict, list, tuple)):
                raise TypeError(f"metrics.json must be flat: {key!r} holds a {type(value).__name__}")
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux reports KiB
        path = write_json(self.stage_dir(stage) / "metrics.json", {**metrics, "kernel_peak_rss_gb": peak_gb})
        if self._by_hand is not None and stage == self.stage:
            from recsys import provenance

            provenance.record_by_hand(self.dir, stage, self.params, self._read, self._by_hand)
        return path

    def read_metrics(self, stage: str) -> dict:
        """A notebook's metrics.json ({} if it has not run)."""
        path = self.dir / stage / "metrics.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def save_figure(self, fig: Any, stage: str, name: str) -> Path:
        """Save a matplotlib figure as PNG beside the notebook's other outputs (atomic)."""
        return save_figure(fig, self.stage_dir(stage) / f"{name}.png")


def write_parquet(df: Any, path: str | os.PathLike) -> Path:
    """Write a DataFrame as Parquet atomically (an interrupted write leaves no partial file)."""
    with atomic_path(path, suffix=".parquet") as tmp:
        df.to_parquet(tmp, index=False)
    return Path(path)


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG, atomically: the one figure writer of notebooks and reports."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    return Path(path)
