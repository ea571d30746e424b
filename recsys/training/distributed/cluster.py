"""Training on several workers with TensorFlow's MultiWorkerMirroredStrategy: clusters, local workers, sharded batches.

The engine is tf.distribute's synchronous data parallelism: every worker holds a copy of the
model, takes its share of each global batch, and the gradients are summed across workers
(all-reduce over gRPC) before every step, so all copies stay identical. Nothing here replaces
it; this module only says who the workers are (`Cluster`, `TF_CONFIG`), starts local ones on
loopback for development and tests (`LocalWorkers`), and cuts the global batches so that each
worker reads its own share (`sharded_batches`). `recsys.training.distributed.worker` is the program
every worker runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsys.features.encoding import EXAMPLE_WEIGHT

STRATEGIES = ("none", "multi_worker")


@dataclass(frozen=True)
class Cluster:
    """The workers' addresses (host:port each); worker 0 is the chief (it writes what the job saves).

    On real hosts, each host's `TF_CONFIG` names the whole cluster and its own index
    (`Cluster.tf_config`); `Cluster.local(n)` picks n free ports on 127.0.0.1.
    """

    workers: tuple[str, ...]

    def __post_init__(self):
        if not self.workers:
            raise ValueError("a cluster needs at least one worker address (host:port)")
        for address in self.workers:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"worker address {address!r} is not host:port (e.g. 10.0.0.2:12345)")

    @classmethod
    def local(cls, n: int) -> Cluster:
        """n workers on loopback, on ports free now (a port taken in between fails the start: retry)."""
        return cls(tuple(f"127.0.0.1:{port}" for port in free_ports(n)))

    def tf_config(self, index: int) -> str:
        """The `TF_CONFIG` value of worker `index`: the cluster and this task."""
        if not 0 <= index < len(self.workers):
            raise IndexError(f"worker index {index} outside the cluster of {len(self.workers)}")
        return json.dumps({"cluster": {"worker": list(self.workers)}, "task": {"type": "worker", "index": index}})


def free_ports(n: int) -> list[int]:
    """n distinct TCP ports the system reports free on 127.0.0.1 (bound together, then released)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def task_from_env(environ: dict[str, str] | None = None) -> tuple[int, int]:
    """(this worker's index, number of workers) from `TF_CONFIG`, as a cluster manager sets it.

    Raises:
        ValueError: TF_CONFIG is missing or not the JSON a multi-worker run needs.
    """
    raw = (environ if environ is not None else os.environ).get("TF_CONFIG")
    if not raw:
        raise ValueError("TF_CONFIG is not set: a multi-worker run needs it on every worker (see README, Distributed)")
    try:
        config = json.loads(raw)
        workers, task = config["cluster"]["worker"], config["task"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f'TF_CONFIG is not {{"cluster": {{"worker": [...]}}, "task": {{...}}}}: {raw!r}') from error
    if task.get("type") != "worker":
        raise ValueError(f"TF_CONFIG task type {task.get('type')!r}: this pipeline runs workers only (worker 0 chief)")
    return int(task["index"]), len(workers)


class LocalWorkers:
    """n processes of `python -m recsys.training.distributed.worker <args>` on loopback, one TF_CONFIG each.

    Each worker gets cores / n threads for TensorFlow's pools, so n workers share the machine
    instead of each assuming it has it all. Output goes to `log_dir/worker-<i>.log`.

    Args:
        n: workers.
        args: the worker program's arguments (the job file).
        log_dir: where each worker's log goes.
    """

    def __init__(self, n: int, args: Sequence[str], log_dir: str | os.PathLike):
        if n < 1:
            raise ValueError(f"distribute.workers must be at least 1, got {n}")
        self.n, self.args, self.log_dir = n, list(args), Path(log_dir)
        self.cluster: Cluster | None = None
        self.processes: list[subprocess.Popen] = []

    def start(self) -> LocalWorkers:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.cluster = Cluster.local(self.n)
        threads = str(max(1, (os.cpu_count() or 1) // self.n))
        for index in range(self.n):
            env = {
                **os.environ,
                "TF_CONFIG": self.cluster.tf_config(index),
                "TF_NUM_INTRAOP_THREADS": threads,
                "TF_NUM_INTEROP_THREADS": threads,
                "TF_USE_LEGACY_KERAS": "1",
            }
            with open(self.log_dir / f"worker-{index}.log", "ab") as log:
                self.processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "recsys.training.distributed.worker", *self.args],
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        return self

    def poll(self) -> list[int | None]:
        return [process.poll() for process in self.processes]

    def kill(self, index: int) -> None:
        """Kill one worker at once (SIGKILL: no clean-up), as a machine failure would."""
        self.processes[index].send_signal(signal.SIGKILL)

    def stop(self) -> None:
        """Kill every worker still running and reap them all."""
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        for process in self.processes:
            process.wait()

    def wait(self, timeout_s: float, grace_s: float = 10.0) -> list[int]:
        """Wait for every worker; once one has failed, the others get `grace_s` before they are killed.

        A failed worker leaves the others blocked in a collective (they wait for it forever, or
        until the coordination service gives up), so they are stopped rather than waited for.

        Returns:
            The exit codes (negative: killed by that signal).

        Raises:
            TimeoutError: the workers ran longer than `timeout_s` (they are killed first).
        """
        deadline, failed_at = time.monotonic() + timeout_s, None
        while True:
            codes = self.poll()
            if all(code is not None for code in codes):
                return [int(code) for code in codes]
            now = time.monotonic()
            if any(code not in (None, 0) for code in codes):
                failed_at = failed_at or now
                if now - failed_at > grace_s:
                    self.stop()
                    return [int(process.returncode) for process in self.processes]
            if now > deadline:
                self.stop()
                raise TimeoutError(f"workers still running after {timeout_s:.0f} s; see the logs in {self.log_dir}")
            time.sleep(0.2)

    def log_tail(self, lines: int = 30) -> str:
        parts = []
        for index in range(self.n):
            text = (self.log_dir / f"worker-{index}.log").read_text(errors="replace").splitlines()
            parts.append(f"--- worker {index} ---\n" + "\n".join(text[-lines:]))
        return "\n".join(parts)

    def __enter__(self) -> LocalWorkers:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_job(
    job_file: str | os.PathLike,
    n_workers: int,
    log_dir: str | os.PathLike,
    timeout_s: float = 3600.0,
    max_restarts: int = 2,
    on_start: Callable[[LocalWorkers, int], None] | None = None,
) -> int:
    """Run a job on `n_workers` local workers; if one fails, restart them all (new ports) from the backup.

    A restarted job resumes at the last completed epoch when the job has a `backup_dir`
    (Keras BackupAndRestore); without one it starts over.

    Args:
        job_file: the job (see `recsys.training.distributed.worker`).
        on_start: called with the workers and the attempt number once they are started (tests
            use it to kill a worker mid-training).

    Returns:
        The number of restarts it took.

    Raises:
        RuntimeError: the workers still failed after `max_restarts` restarts (with their logs).
    """
    for attempt in range(max_restarts + 1):
        workers = LocalWorkers(n_workers, [str(job_file)], Path(log_dir) / f"attempt-{attempt}")
        with workers:
            if on_start is not None:
                on_start(workers, attempt)
            codes = workers.wait(timeout_s)
        if all(code == 0 for code in codes):
            return attempt
    raise RuntimeError(
        f"the job {job_file} failed on {n_workers} workers {max_restarts + 1} times (exit codes {codes}):\n"
        + workers.log_tail()
    )


def sharded_batches(
    features: dict[str, np.ndarray],
    labels: np.ndarray | None,
    global_batch: int,
    seed: int,
    first_epoch: int = 0,
    movies: dict[str, np.ndarray] | None = None,
    movie_row: str | None = None,
) -> Callable:
    """A dataset function for `strategy.distribute_datasets_from_function`: each worker's share of each global batch.

    Every worker draws the same permutation of the examples for an epoch (seeded by the seed
    and the epoch number) and cuts each global batch of `global_batch` examples into equal
    parts, one per worker: one worker reads the same batches as the single-process
    `rating_training.training_dataset`, n workers read them split n ways. Each example carries
    `EXAMPLE_WEIGHT` = 1 / its global batch's size, so a loss summed with those weights on each
    worker and summed again by the all-reduce is the global batch's mean. A global batch with
    fewer examples than workers (the last one, at most) leaves some workers an empty share: the
    models' losses are sums over the share, so such a share adds exactly 0 loss and 0 gradient.

    The dataset runs forever from `first_epoch` (Keras keeps one iterator across epochs with
    `steps_per_epoch`); a resumed job passes the epoch it resumes at, so it reads the batches
    the interrupted run would have read.

    Args:
        features: per-example inputs (with `movie_row`, the movie inputs come from `movies`).
        labels: per-example labels, or None (the retrieval model learns from the features alone).
        movies, movie_row: movie inputs kept once per movie (`encoding.ExampleInputs`).
    """
    n = len(next(iter(features.values())))
    if global_batch < 1 or n == 0:
        raise ValueError(f"sharded_batches needs examples and a positive batch size (got {n} examples, {global_batch})")
    n_batches = -(-n // global_batch)

    def dataset_fn(context):
        import tensorflow as tf

        part, parts = context.input_pipeline_id, context.num_input_pipelines
        tensors = {name: tf.constant(value) for name, value in features.items()}
        movie_tensors = {name: tf.constant(value) for name, value in (movies or {}).items()}
        label_tensor = tf.constant(np.asarray(labels, np.float32)) if labels is not None else None
        seed_head = tf.constant(seed, tf.int64)

        def epoch_batches(epoch):
            order = tf.random.experimental.stateless_shuffle(
                tf.range(n, dtype=tf.int64), seed=tf.stack([seed_head, epoch])
            )

            def share(i):
                start = i * global_batch
                size = tf.minimum(tf.constant(global_batch, tf.int64), n - start)
                return order[start + size * part // parts : start + size * (part + 1) // parts], size

            return tf.data.Dataset.range(n_batches).map(share)

        def gather(index, size):
            batch = {name: tf.gather(value, index) for name, value in tensors.items()}
            if movie_row is not None:
                rows = batch.pop(movie_row)
                batch.update({name: tf.gather(value, rows) for name, value in movie_tensors.items()})
            batch[EXAMPLE_WEIGHT] = tf.fill(tf.shape(index), 1.0 / tf.cast(size, tf.float32))
            return batch if label_tensor is None else (batch, tf.gather(label_tensor, index))

        options = tf.data.Options()
        options.autotune.enabled = False
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        epochs = tf.data.Dataset.range(first_epoch, np.iinfo(np.int32).max)
        return epochs.flat_map(epoch_batches).map(gather).prefetch(2).with_options(options)

    dataset_fn.steps_per_epoch = n_batches
    return dataset_fn


def is_chief(strategy) -> bool:
    """True on the worker that writes the job's outputs (worker 0; the only one without a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type in ("chief", None) or (resolver.task_type == "worker" and resolver.task_id == 0)


def write_dir(folder: str | os.PathLike, strategy) -> Path:
    """Where this worker saves: the real folder on the chief, a scratch folder elsewhere (`discard` it after).

    Every worker must save (reading the replicated metric variables is a collective), but only
    the chief's copy is kept.
    """
    return Path(folder) if is_chief(strategy) else Path(tempfile.mkdtemp(prefix="recsys-worker-"))


def discard(folder: Path, strategy) -> None:
    """Remove a non-chief's scratch folder (the chief's is the real one and stays)."""
    if not is_chief(strategy):
        shutil.rmtree(folder, ignore_errors=True)
