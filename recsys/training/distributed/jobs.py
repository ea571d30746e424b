"""The notebooks' side of multi-worker training: write a job, run it on the workers, read back the model.

With `distribute.strategy: multi_worker`, the rating and retrieval two-tower models are trained
through these functions instead of in the notebook's kernel. The job runs either on
`distribute.workers` local worker processes on loopback (`run_job`: development,
tests, one machine), or, with `distribute.hosts` set, on real hosts that a cluster manager starts
(each runs `python -m recsys.training.distributed.worker job.json` with its own `TF_CONFIG`; the notebook
prints both and waits for the chief's result). The chief's saved model and `result.json` come
back as the same records the single-process trainers return (`TrainingResult`,
`RetrievalTrainingResult`).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from recsys.data.rating_scale import RatingScale
from recsys.models.configs import RatingConfig, RetrievalConfig
from recsys.training.callbacks import steady_throughput
from recsys.training.distributed.cluster import STRATEGIES, Cluster, run_job
from recsys.training.distributed.worker import RESULT, write_job


@dataclass(frozen=True)
class DataFiles:
    """The parquet files a job reads (every worker reads the same ones: shared storage on real hosts)."""

    interactions: Path
    users: Path
    movies: Path

    @classmethod
    def of_run(cls, run) -> DataFiles:
        """Notebook 01's tables of a run (`artifacts.Run`)."""
        return cls(run.require("interactions"), run.require("users"), run.require("movies"))


@dataclass(frozen=True)
class Distribute:
    """The `distribute` params group: how the two-tower models are trained.

    Attributes:
        strategy: "none" (in the notebook's kernel) or "multi_worker" (tf.distribute's
            MultiWorkerMirroredStrategy).
        workers: local worker processes (on 127.0.0.1, ports chosen free at run time); unused
            with `hosts`.
        timeout_s: a job running longer is stopped (and fails).
        max_restarts: times a failed local job is restarted; it resumes from the last completed epoch.
        hosts: the workers' host:port addresses on a real cluster (empty: local workers). The
            notebook then starts nothing: it writes the job, prints what each host runs, and
            waits for the chief's result.
    """

    strategy: str
    workers: int
    timeout_s: float
    max_restarts: int
    hosts: tuple[str, ...]

    @classmethod
    def from_params(cls, group: dict) -> Distribute:
        if group["strategy"] not in STRATEGIES:
            raise ValueError(f"distribute.strategy {group['strategy']!r} is not one of {STRATEGIES}")
        hosts = tuple(group.get("hosts") or ())
        if hosts:
            Cluster(hosts)  # checks every address is host:port
        return cls(
            group["strategy"], int(group["workers"]), float(group["timeout_s"]), int(group["max_restarts"]), hosts
        )

    @property
    def n_workers(self) -> int:
        if self.strategy == "none":
            return 1
        return len(self.hosts) or self.workers

    @property
    def label(self) -> str:
        """What trained a model, as the reports say it."""
        if self.strategy == "none":
            return "one process (no strategy)"
        where = f"hosts {', '.join(self.hosts)}" if self.hosts else "local workers on 127.0.0.1"
        return f"MultiWorkerMirroredStrategy, {self.n_workers} workers ({where})"

    def metrics(self, prefix: str = "") -> dict[str, str | int]:
        """`<prefix>trained_by` (the label) and `<prefix>train_workers`, as a run's metrics record them."""
        return {f"{prefix}trained_by": self.label, f"{prefix}train_workers": self.n_workers}


def run(
    job: dict, job_dir: Path, settings: Distribute, on_start=None, keep_backup: bool = False
) -> tuple[dict, Path, int]:
    """Run one job; returns (the chief's result, the model folder, restarts it took).

    The job's backup dir lives in `job_dir` and is removed after a successful run (Keras also
    deletes its checkpoint when training ends), unless `keep_backup`.
    """
    job_dir = Path(job_dir)
    if job_dir.exists():
        shutil.rmtree(job_dir)
    job = {**job, "out": str(job_dir), "backup_dir": str(job_dir / "backup")}
    job_file = write_job(job_dir / "job.json", job)
    if settings.hosts:
        restarts = 0
        print(cluster_instructions(job_file, Cluster(settings.hosts)))
        wait_for_result(job_dir / RESULT, settings.timeout_s)
    else:
        restarts = run_job(
            job_file, settings.workers, job_dir / "logs", settings.timeout_s, settings.max_restarts, on_start
        )
    result = json.loads((job_dir / RESULT).read_text())
    result["restarts"] = restarts
    if not keep_backup:
        shutil.rmtree(job_dir / "backup", ignore_errors=True)
    return result, job_dir / "model", restarts


def cluster_instructions(job_file: Path, cluster: Cluster) -> str:
    """What each host of a real cluster runs for this job (the job's paths must be on storage all hosts share)."""
    lines = [f"job {job_file}: start on each host (worker 0 is the chief; it writes the model and result.json):"]
    for index, address in enumerate(cluster.workers):
        lines.append(
            f"  {address}: TF_CONFIG='{cluster.tf_config(index)}' TF_USE_LEGACY_KERAS=1 "
            f"python -m recsys.training.distributed.worker {job_file}"
        )
    return "\n".join(lines)


def wait_for_result(path: Path, timeout_s: float, poll_s: float = 1.0) -> None:
    """Wait until the chief has written its result (it writes it last, by an atomic rename)."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"no {path.name} after {timeout_s:.0f} s: are the hosts running the job? ({path.parent})"
            )
        time.sleep(poll_s)


def _job(model: str, config, files: DataFiles, seed: int, fit_on: tuple[str, ...], epochs: int | None) -> dict:
    """A job's keys every model has (`run` adds its folders)."""
    paths = {name: str(getattr(files, name)) for name in ("interactions", "users", "movies")}
    return {"model": model, **paths, "config": config.to_dict(), "seed": seed, "fit_on": list(fit_on), "epochs": epochs}


def train_rating(
    config: RatingConfig,
    files: DataFiles,
    seed: int,
    scale: RatingScale,
    settings: Distribute,
    job_dir: Path,
    fit_on: tuple[str, ...] = ("train",),
    epochs: int | None = None,
):
    """`rating_training.train_rating_model` on the workers: early stopping on val, or `epochs` epochs."""
    from recsys.training.rating_training import TrainingResult, load_rating_model

    job = {**_job("rating", config, files, seed, fit_on, epochs), "rating_scale": scale.to_dict()}
    result, folder, _ = run(job, job_dir, settings)
    model, _ = load_rating_model(folder)
    return TrainingResult(
        model,
        result["history"],
        result["epochs"],
        result["best_epoch"],
        result["wall_s"],
        steady_throughput(result["n_examples"], result["epoch_s"]),
        result["epoch_s"],
    )


def early_stopping_refit_test(
    config: RatingConfig,
    files: DataFiles,
    data: dict[str, tuple],
    seed: int,
    scale: RatingScale,
    settings: Distribute,
    job_dir: Path,
) -> dict:
    """The rating model's protocol (`rating_training.early_stopping_refit_test`), each fit on the workers.

    Each grid point's early-stopped fit is a job in `selected` (one point) or `selected_<position>`.

    Args:
        data: {"test": (inputs, ratings)}: the test split, scored in this process.
    """
    from recsys.training.rating_training import choose_on_val, protocol_result

    one_point = len(config.grid_points()) == 1
    chosen, selected, grid = choose_on_val(
        config,
        lambda point, position: train_rating(
            point, files, seed, scale, settings, Path(job_dir) / ("selected" if one_point else f"selected_{position}")
        ),
    )
    refit = train_rating(
        chosen, files, seed, scale, settings, Path(job_dir) / "refit", ("train", "val"), selected.best_epoch
    )
    return protocol_result(selected, refit, *data["test"], scale, chosen, grid)


def train_retrieval(
    config: RetrievalConfig,
    files: DataFiles,
    seed: int,
    settings: Distribute,
    job_dir: Path,
    fit_on: tuple[str, ...] = ("train",),
    epochs: int | None = None,
):
    """`retrieval_training.train_retrieval_model` on the workers (`epochs` None: early stopping on val recall@100)."""
    from recsys.models.retrieval_model import load_retrieval_model
    from recsys.training.retrieval_training import RetrievalTrainingResult

    job = _job("retrieval", config, files, seed, fit_on, epochs)
    result, folder, _ = run(job, job_dir, settings)
    model, _ = load_retrieval_model(folder)
    return RetrievalTrainingResult(
        model,
        result["history"],
        result["wall_s"],
        steady_throughput(result["n_examples"], result["epoch_s"]),
        result["n_examples"],
    )


def retrieval_fitter(settings: Distribute, files: DataFiles, job_dir: Path, inputs, seed: int, monitor):
    """A retrieval config -> its two-tower, early-stopped on the monitored val recall, where `settings` say it trains.

    In this process (`retrieval_training.train_retrieval_model` with `monitor`), or under
    `multi_worker` on the workers (`train_retrieval`, with the same early stopping run by every
    worker), one job folder per negatives variant: `job_dir / two_tower_<negatives>`. What
    `retrieval_training.compare_negatives` trains each variant with.

    Args:
        files: the run's tables the workers read (`DataFiles.of_run`).
        inputs: the run's `retrieval_inputs.RetrievalInputs` (encoder, train positives, user and movie tables).
        monitor: the val `FullRankingMonitor` (`retrieval_training.full_ranking_monitor`).
    """
    from recsys.training.retrieval_training import train_retrieval_model

    def fit(config: RetrievalConfig):
        if settings.strategy == "none":
            tables = (inputs.encoder, inputs.train, inputs.user_table, inputs.movie_table)
            return train_retrieval_model(config, *tables, seed, monitor=monitor)
        return train_retrieval(config, files, seed, settings, Path(job_dir) / f"two_tower_{config.negatives}")

    return fit
