"""Multi-worker training (tf.distribute MultiWorkerMirroredStrategy): clusters, sharded batches, loss scaling, workers."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest

from recsys.training.distributed import cluster as distributed
from recsys.training.distributed.worker import check_job

# ---- cluster and jobs (no TensorFlow) ------------------------------------------------------------


def test_cluster_tf_config_names_the_cluster_and_the_task():
    cluster = distributed.Cluster(("10.0.0.1:2222", "10.0.0.2:2222"))
    config = json.loads(cluster.tf_config(1))
    assert config == {"cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]}, "task": {"type": "worker", "index": 1}}
    assert distributed.task_from_env({"TF_CONFIG": cluster.tf_config(1)}) == (1, 2)
    with pytest.raises(IndexError, match="outside the cluster of 2"):
        cluster.tf_config(2)
    with pytest.raises(ValueError, match="not host:port"):
        distributed.Cluster(("10.0.0.1",))
    with pytest.raises(ValueError, match="TF_CONFIG is not set"):
        distributed.task_from_env({})
    with pytest.raises(ValueError, match="TF_CONFIG is not"):
        distributed.task_from_env({"TF_CONFIG": "{oops"})


def test_local_cluster_takes_distinct_free_ports():
    cluster = distributed.Cluster.local(3)
    ports = [int(address.rsplit(":", 1)[1]) for address in cluster.workers]
    assert len(set(ports)) == 3 and all(address.startswith("127.0.0.1:") for address in cluster.workers)


def test_a_bad_job_is_refused_before_any_worker_starts(tmp_path):
    data = {name: tmp_path / f"{name}.parquet" for name in ("interactions", "users", "movies")}
    for path in data.values():
        path.write_bytes(b"")
    job = {
        "model": "rating",
        **{k: str(v) for k, v in data.items()},
        "config": {},
        "seed": 1,
        "fit_on": ["train"],
        "epochs": None,
        "out": str(tmp_path / "out"),
        "backup_dir": None,
        "rating_scale": {},
    }
    check_job(job)
    with pytest.raises(ValueError, match="lacks \\['seed'\\]"):
        check_job({k: v for k, v in job.items() if k != "seed"})
    with pytest.raises(ValueError, match="is not one of"):
        check_job({**job, "model": "gbdt"})
    with pytest.raises(ValueError, match="cannot stop early on val"):
        check_job({**job, "fit_on": ["train", "val"]})
    with pytest.raises(ValueError, match="does not exist"):
        check_job({**job, "users": str(tmp_path / "missing.parquet")})


def test_distribute_params_say_where_models_train_and_what_real_hosts_run(tmp_path):
    from recsys.runs.params import load_params
    from recsys.training.distributed.jobs import Distribute, cluster_instructions, wait_for_result

    assert Distribute.from_params(load_params()["distribute"]).label == "one process (no strategy)"
    local = Distribute.from_params({**load_params()["distribute"], "strategy": "multi_worker", "workers": 3})
    assert local.n_workers == 3 and local.label.startswith("MultiWorkerMirroredStrategy, 3 workers (local")
    group = {**load_params()["distribute"], "strategy": "multi_worker", "hosts": ["10.0.0.1:2222", "10.0.0.2:2222"]}
    hosts = Distribute.from_params(group)
    assert hosts.n_workers == 2 and "hosts 10.0.0.1:2222, 10.0.0.2:2222" in hosts.label
    with pytest.raises(ValueError, match="not host:port"):
        Distribute.from_params({**group, "hosts": ["10.0.0.1"]})
    text = cluster_instructions(tmp_path / "job.json", distributed.Cluster(hosts.hosts))
    for index, line in enumerate(text.splitlines()[1:]):  # one command per host, its own TF_CONFIG
        config = json.loads(line.split("TF_CONFIG='")[1].split("'")[0])
        assert config["task"] == {"type": "worker", "index": index} and line.endswith(f"{tmp_path / 'job.json'}")
    with pytest.raises(TimeoutError, match="are the hosts running the job"):
        wait_for_result(tmp_path / "result.json", timeout_s=0.3, poll_s=0.1)
    (tmp_path / "result.json").write_text("{}")
    wait_for_result(tmp_path / "result.json", timeout_s=1)


# ---- sharded batches and the loss (TensorFlow, one process) --------------------------------------


def _epochs(dataset_fn, part: int, parts: int, n_batches: int):
    import tensorflow as tf

    context = tf.distribute.InputContext(num_input_pipelines=parts, input_pipeline_id=part, num_replicas_in_sync=parts)
    return list(dataset_fn(context).take(n_batches).as_numpy_iterator())


def test_workers_split_every_global_batch_and_weigh_examples_by_its_size():
    n, batch = 103, 20
    features = {"row": np.arange(n, dtype=np.int64)}
    labels = np.arange(n, dtype=np.float32)
    dataset_fn = distributed.sharded_batches(features, labels, batch, seed=3)
    assert dataset_fn.steps_per_epoch == 6
    whole = _epochs(dataset_fn, 0, 1, 12)  # two epochs on one worker
    halves = [_epochs(dataset_fn, part, 2, 12) for part in (0, 1)]
    for step, (features_1, labels_1) in enumerate(whole):
        np.testing.assert_array_equal(labels_1, features_1["row"])  # labels stay with their examples
        joined = np.concatenate([halves[0][step][0]["row"], halves[1][step][0]["row"]])
        np.testing.assert_array_equal(joined, features_1["row"])  # the two shares are the global batch
        size = len(features_1["row"])
        for part in (0, 1):
            np.testing.assert_allclose(halves[part][step][0][distributed.EXAMPLE_WEIGHT], 1 / size)
    epoch_0 = np.concatenate([f["row"] for f, _ in whole[:6]])
    epoch_1 = np.concatenate([f["row"] for f, _ in whole[6:]])
    assert sorted(epoch_0) == list(range(n)) and sorted(epoch_1) == list(range(n))
    assert not np.array_equal(epoch_0, epoch_1)
    resumed = _epochs(distributed.sharded_batches(features, labels, batch, seed=3, first_epoch=1), 0, 1, 6)
    np.testing.assert_array_equal(np.concatenate([f["row"] for f, _ in resumed]), epoch_1)


def test_weighted_shares_of_a_batch_sum_to_the_batch_loss():
    """Each worker's loss times its share, summed (what the all-reduce adds up), is the one-process loss."""
    import tensorflow as tf

    from recsys.models.configs import RatingConfig
    from recsys.models.rating_model import build_rating_model
    from recsys.runs.params import load_params

    config = dataclasses.replace(RatingConfig.from_params(load_params()["rating"]), features=["ids"], embedding_dim=4)
    model = build_rating_model({"user_id": 5, "movie_id": 7, "genres": 2, "title": 3}, config, 3.5)
    rng = np.random.default_rng(0)
    n = 10
    features = {"user_id": rng.integers(1, 5, n).astype(np.int32), "movie_id": rng.integers(1, 7, n).astype(np.int32)}
    ratings = rng.integers(1, 6, n).astype(np.float32)
    whole = float(model.compute_loss(({k: tf.constant(v) for k, v in features.items()}, tf.constant(ratings))))
    shares = 0.0
    for rows in (slice(0, 3), slice(3, n)):
        part = {k: tf.constant(v[rows]) for k, v in features.items()}
        part[distributed.EXAMPLE_WEIGHT] = tf.fill([len(ratings[rows])], 1.0 / n)
        shares += float(model.compute_loss((part, tf.constant(ratings[rows]))))
    assert shares == pytest.approx(whole, rel=1e-6)


def _loss_and_gradients(model, batch) -> tuple[float, list[np.ndarray]]:
    """The model's loss of a batch and its gradients, traced as `fit` runs them (tf.function)."""
    import tensorflow as tf

    @tf.function
    def step(batch):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(batch, training=True)
        return loss, tape.gradient(loss, model.trainable_variables)

    loss, gradients = step(batch)
    assert all(gradient is not None for gradient in gradients)
    return float(loss), [tf.convert_to_tensor(gradient).numpy() for gradient in gradients]


@pytest.mark.filterwarnings("ignore:In loss categorical_crossentropy")  # the one-example share: a 1 x 1 softmax
def test_an_empty_share_of_the_last_global_batch_adds_zero_loss_and_gradient():
    """5 examples in global batches of 4 on 3 workers: the last batch (1 example) leaves two workers nothing.

    Their losses are sums over no examples: 0, with zero gradients (a mean of nothing was NaN for
    the rating model; TFRS's in-batch softmax failed on no pairs), and the shares still add up to
    the one-process loss of that batch.
    """
    import tensorflow as tf

    from recsys.models.configs import RatingConfig, RetrievalConfig
    from recsys.models.rating_model import build_rating_model
    from recsys.models.retrieval_model import SAMPLING_PROBABILITY, build_retrieval_model
    from recsys.runs.params import load_params

    n, batch, workers = 5, 4, 3
    rng = np.random.default_rng(0)
    features = {"user_id": rng.integers(1, 5, n).astype(np.int32), "movie_id": rng.integers(1, 7, n).astype(np.int32)}
    ratings = rng.integers(1, 6, n).astype(np.float32)
    dataset_fn = distributed.sharded_batches(features, ratings, batch, seed=3)
    last = [_epochs(dataset_fn, part, workers, 2)[1] for part in range(workers)]  # each worker's share of batch 2
    assert [len(share_labels) for _, share_labels in last] == [0, 0, 1]

    cardinalities = {"user_id": 5, "movie_id": 7, "genres": 2, "title": 3}
    params = load_params()
    rating_config = dataclasses.replace(RatingConfig.from_params(params["rating"]), features=["ids"], embedding_dim=4)
    model = build_rating_model(cardinalities, rating_config, 3.5)
    losses = []
    for share, share_labels in last:
        loss, gradients = _loss_and_gradients(model, ({k: tf.constant(v) for k, v in share.items()}, share_labels))
        assert np.isfinite(loss) and all(np.isfinite(gradient).all() for gradient in gradients)
        if len(share_labels) == 0:
            assert loss == 0.0 and not any(gradient.any() for gradient in gradients)
        losses.append(loss)
    whole, labels = last[2][0], last[2][1]
    one_process = float(model.compute_loss(({k: tf.constant(whole[k]) for k in features}, tf.constant(labels))))
    assert sum(losses) == pytest.approx(one_process, rel=1e-6)

    retrieval_config = dataclasses.replace(
        RetrievalConfig.from_params(params["retrieval"]), features=["ids"], embedding_dim=4
    )
    assert retrieval_config.remove_accidental_hits and retrieval_config.logq_correction  # the paths that failed
    retrieval = build_retrieval_model(cardinalities, retrieval_config)
    pairs = {**features, SAMPLING_PROBABILITY: np.full(n, 0.2, np.float32)}
    for share in (
        _epochs(distributed.sharded_batches(pairs, None, batch, 3), part, workers, 2)[1] for part in range(3)
    ):
        loss, gradients = _loss_and_gradients(retrieval, {k: tf.constant(v) for k, v in share.items()})
        assert np.isfinite(loss) and all(np.isfinite(gradient).all() for gradient in gradients)
        if len(share["movie_id"]) == 0:
            assert loss == 0.0 and not any(gradient.any() for gradient in gradients)


# ---- two workers over loopback -------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory):
    """Notebook 01's tables on params/smoke.yaml (generated data) and the run's params."""
    import run_all
    from recsys.runs.params import load_params
    from tests.conftest import PROJECT_ROOT

    artifacts = tmp_path_factory.mktemp("distributed")
    assert (
        run_all.main(
            [
                "--artifacts-dir",
                str(artifacts),
                "--params",
                str(PROJECT_ROOT / "params" / "smoke.yaml"),
                "--until",
                "01",
            ]
        )
        == 0
    )
    (run_dir,) = [p for p in artifacts.iterdir() if p.is_dir()]
    stage = run_dir / "01_preprocess"
    from recsys.training.distributed.jobs import DataFiles

    files = DataFiles(stage / "interactions.parquet", stage / "users.parquet", stage / "movies.parquet")
    return files, load_params(PROJECT_ROOT / "params" / "smoke.yaml"), run_dir


@pytest.mark.slow
def test_two_workers_reach_the_single_process_rating_model_and_resume_after_a_kill(smoke_data, tmp_path):
    import pandas as pd

    from recsys.data.rating_scale import RatingScale
    from recsys.features.encoding import FeatureEncoder
    from recsys.models.configs import RatingConfig
    from recsys.training import rating_training
    from recsys.training.distributed.jobs import Distribute, run, train_rating

    files, params, run_dir = smoke_data
    config = dataclasses.replace(RatingConfig.from_params(params["rating"]), max_epochs=6)
    scale = RatingScale.from_dict(json.loads((run_dir / "01_preprocess" / "dataset.json").read_text()))
    interactions = pd.read_parquet(files.interactions)
    users, movies = pd.read_parquet(files.users), pd.read_parquet(files.movies)
    frames = {s: interactions[interactions["split"] == s] for s in ("train", "val")}
    encoder = FeatureEncoder.fit(users, movies, frames["train"])
    tables = encoder.user_table(users), encoder.movie_table(movies)
    data = {s: (encoder.example_inputs(f, *tables), f["rating"].to_numpy("float32")) for s, f in frames.items()}
    epochs = 6
    single = rating_training.train_rating_model(
        config, encoder.cardinalities(), *data["train"], params["seed"], epochs=epochs
    )
    rmse_single = rating_training.evaluate_ratings(single.model, *data["val"], scale)["rmse"]

    settings = Distribute("multi_worker", 2, 600, 2, ())
    two = train_rating(config, files, params["seed"], scale, settings, tmp_path / "two", epochs=epochs)
    rmse_two = rating_training.evaluate_ratings(two.model, *data["val"], scale)["rmse"]
    assert abs(rmse_two - rmse_single) < 0.005, (rmse_two, rmse_single)

    def kill_after_epoch_2(workers, attempt):
        if attempt > 0:
            return
        progress = tmp_path / "killed" / "progress.jsonl"
        deadline = time.monotonic() + 300
        while not (progress.exists() and len(progress.read_text().splitlines()) >= 2):
            assert time.monotonic() < deadline and all(code is None for code in workers.poll())
            time.sleep(0.1)
        workers.kill(1)

    job = {
        "model": "rating",
        **{name: str(getattr(files, name)) for name in ("interactions", "users", "movies")},
        "config": config.to_dict(),
        "seed": params["seed"],
        "fit_on": ["train"],
        "epochs": epochs,
        "rating_scale": scale.to_dict(),
    }
    result, folder, restarts = run(job, tmp_path / "killed", settings, on_start=kill_after_epoch_2)
    assert restarts == 1 and result["first_epoch"] >= 2  # resumed after the epochs saved, not from scratch
    assert not (tmp_path / "killed" / "backup").exists()
    resumed, _ = rating_training.load_rating_model(folder)
    rmse_resumed = rating_training.evaluate_ratings(resumed, *data["val"], scale)["rmse"]
    assert abs(rmse_resumed - rmse_single) < 0.005, (rmse_resumed, rmse_single)
    assert Path(folder, "model.json").exists()


@pytest.mark.slow
def test_two_workers_reach_the_single_process_retrieval_recall(smoke_data, tmp_path):
    import pandas as pd

    from recsys.evaluation import full_ranking
    from recsys.features.encoding import FeatureEncoder
    from recsys.models import retrieval_model
    from recsys.models.configs import RetrievalConfig
    from recsys.training import retrieval_training
    from recsys.training.distributed.jobs import Distribute, train_retrieval

    files, params, _ = smoke_data
    config = RetrievalConfig.from_params(params["retrieval"])
    interactions = pd.read_parquet(files.interactions)
    users, movies = pd.read_parquet(files.users), pd.read_parquet(files.movies)
    train = interactions[interactions["split"] == "train"]
    encoder = FeatureEncoder.fit(users, movies, train)
    user_table, movie_table = encoder.user_table(users), encoder.movie_table(movies)
    matrices = full_ranking.split_matrices(
        retrieval_training.positives(interactions, config.min_rating),
        np.sort(interactions["user_id"].unique()),
        movie_table.index.to_numpy(),
    )

    def recall_at_100(model) -> float:
        scores = retrieval_model.full_ranking_scores(
            model, encoder, user_table, movie_table, matrices.user_ids, matrices.movie_ids
        )
        return full_ranking.evaluate_scores(scores, matrices, "val", ks=(100,))["recall_at_100"]

    single = retrieval_training.train_retrieval_model(
        config, encoder, train, user_table, movie_table, params["seed"], epochs=config.epochs
    )
    two = train_retrieval(
        config, files, params["seed"], Distribute("multi_worker", 2, 600, 0, ()), tmp_path, epochs=config.epochs
    )
    recall_single, recall_two = recall_at_100(single.model), recall_at_100(two.model)
    assert recall_two > 0.6  # the workers learnt: 100 of the 250 movies drawn at random find about 0.4
    assert abs(recall_two - recall_single) < 0.01, (recall_two, recall_single)


def test_small_sparse_gradients_are_made_dense_and_update_the_variables_the_same():
    """Under a strategy the small tables' gradients are all-reduced dense: same update as the sparse one."""
    import tensorflow as tf

    from recsys.models.lazy_adam import LazyAdam
    from recsys.training.distributed.gradients import aggregate_small_tables_dense, densify_small

    small, large = tf.Variable(tf.ones([5, 2])), tf.Variable(tf.ones([50, 2]))
    rows = tf.constant([1, 3, 1])  # a repeated row: Keras sums it before the update
    sparse = tf.IndexedSlices(tf.constant([[1.0, 2.0], [3.0, 4.0], [0.5, 0.5]]), rows, tf.constant([5, 2]))
    big = tf.IndexedSlices(tf.ones([2, 2]), tf.constant([0, 9]), tf.constant([50, 2]))
    (dense, _), (kept, _) = densify_small([(sparse, small), (big, large)], limit_bytes=5 * 2 * 4)
    assert isinstance(dense, tf.Tensor) and isinstance(kept, tf.IndexedSlices)  # 40 bytes dense, 400 kept sparse
    np.testing.assert_allclose(dense.numpy(), [[0, 0], [1.5, 2.5], [0, 0], [3, 4], [0, 0]])

    for optimizer_class in (tf.keras.optimizers.Adam, tf.keras.optimizers.SGD):
        moved = {}
        for densify in (False, True):
            variable = tf.Variable(tf.ones([5, 2]))
            optimizer = optimizer_class(0.1)
            if densify:
                aggregate_small_tables_dense(optimizer)
            for _ in range(3):
                optimizer.apply_gradients([(sparse, variable)])
            moved[densify] = variable.numpy()
        np.testing.assert_allclose(moved[True], moved[False], rtol=1e-6)
        assert not np.allclose(moved[True], 1.0)
    lazy = LazyAdam(0.1)
    aggregate_small_tables_dense(lazy)
    assert "aggregate_gradients" not in vars(lazy)  # its row-wise updates need the sparse rows
