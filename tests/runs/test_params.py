"""Parameters: merging, overrides, and every kind of bad input rejected with the key named."""

from __future__ import annotations

import ast
import json

import nbformat
import pytest
import yaml

import run_all
from recsys.runs.params import DEFAULT_PARAMS_FILE, ParamsError, load_params, params_hash, parse_override
from tests.conftest import PROJECT_ROOT


def write(tmp_path, text, name="p.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_load_and_validate():
    params = load_params()
    assert params["dataset"] == "ml-1m"
    assert params["split"]["strategy"] == "random"


def test_file_then_overrides_merge_in_order(tmp_path):
    path = write(tmp_path, "dataset: ml-100k\nsplit:\n  strategy: temporal\n")
    params = load_params(path, ["split.strategy=random", "seed=7", "data_dir=/x"])
    assert params["dataset"] == "ml-100k"
    assert params["split"] == {**load_params()["split"], "strategy": "random"}
    assert params["seed"] == 7 and params["data_dir"] == "/x"


@pytest.mark.parametrize("strategy", ["random", "temporal", "leave_last_out", "global_temporal"])
def test_every_split_strategy_is_accepted_and_documented(strategy):
    assert load_params(overrides=[f"split.strategy={strategy}"])["split"]["strategy"] == strategy
    comment = DEFAULT_PARAMS_FILE.read_text().split("split:", 1)[1].split("val_share:", 1)[0]
    assert strategy in comment  # the schema's comment lists it


def test_override_values_are_yaml_typed():
    assert parse_override("split.val_share=0.2") == (["split", "val_share"], 0.2)
    assert parse_override("data_dir=null") == (["data_dir"], None)
    assert parse_override("download.sources=[a, b]") == (["download", "sources"], ["a", "b"])


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("splitt.strategy=random", "unknown parameter 'splitt'"),
        ("split.stratgy=random", "did you mean 'strategy'"),
        ("seed=abc", "seed: expected int"),
        ("split.val_share=[1]", "split.val_share: expected float"),
        ("geo=zipcodes", "geo in override -p geo=zipcodes: expected a group of keys"),
        ("dataset=ml-30m", "must be one of ml-1m, ml-100k, ml-10m, ml-20m, ml-25m, synthetic"),
        ("synthetic.format=ml-100k", "must be one of ml-1m, ml-25m"),
        ("split.strategy=leave-one-out", "must be one of random, temporal, leave_last_out, global_temporal"),
        ("split.foldin_share=1.0", "split.foldin_share=1.0: must be a share in [0, 1)"),
        ("split.foldin_given=[0]", "split.foldin_given"),
        ("retrieval.model=gru", "retrieval.model='gru': must be one of two_tower, sequential"),
        ("sequential.history_length=0", "sequential.history_length=0: must be >= 1"),
        ("split.test_share=0.95", "must leave a share for train"),
        ("split.val_share=-0.1", "split.val_share=-0.1: must be a share"),
        ("run_name=../escape", "run_name='../escape'"),
        ("synthetic.n_users=True", "synthetic.n_users: expected int"),
        ("download.sources=[]", "download.sources=[]: must not be empty"),
        ("nokey", "not of the form key.sub=value"),
        # model parameters that make no sense (issue: rejected before training, naming the key)
        ("rating.max_epochs=-1", "rating.max_epochs=-1: must be >= 1"),
        ("rating.batch_size=0", "rating.batch_size=0: must be >= 1"),
        ("rating.features=[]", "rating.features=[]: the feature list is empty"),
        ("rating.features=[user, colour]", "unknown feature(s) ['colour']"),
        ("rating.learning_rate=0", "rating.learning_rate=0.0: must be > 0"),
        ("rating.mlp_layers=[32, 0]", "item 1 (0) must be >= 1"),
        ("rating.optimizer=rmsprop", "must be one of adam, adagrad, sgd"),
        ("rating.head_on=ids", "rating.head_on='ids': must be one of features, towers"),
        ("rating.id_learning_rate=-0.1", "rating.id_learning_rate=-0.1: must be >= 0"),
        ("baselines.svd_grid.n_epochs=[]", "must not be empty"),
        ("baselines.svd_grid.lr_all=[0.005, -1]", "item 1 (-1.0) must be > 0"),
        ("baselines.svd_grid.biased=[true]", "unknown parameter 'baselines.svd_grid.biased'"),
        ("multitask.weight_pairs=[]", "must list at least one (w_rating, w_retrieval) pair"),
        ("multitask.weight_pairs=[[1.0, 0.0], [0.0, 0.0]]", "item 1 ([0.0, 0.0]) must have weights >= 0, not both 0"),
        ("multitask.weight_pairs=[[1.0, -0.5]]", "item 0 ([1.0, -0.5]) must have weights >= 0"),
        ("multitask.weight_pairs=[[1.0, 0.3, 2.0]]", "must be a pair of numbers [w_rating, w_retrieval]"),
        (
            "multitask.weight_pairs=[[1.0, 0.3], [1, 0.3]]",
            "multitask.weight_pairs=[[1.0, 0.3], [1.0, 0.3]]: lists a pair twice",
        ),
        ("multitask.retrieval_group=-1", "multitask.retrieval_group=-1: must be >= 0"),
        ("multitask.rmse_tolerance=-0.01", "multitask.rmse_tolerance=-0.01: must be >= 0"),
        ("retrieval.popularity_prior_grid=[0.0, -0.1]", "item 1 (-0.1) must be >= 0"),
        ("retrieval.popularity_prior_grid=[]", "retrieval.popularity_prior_grid=[]: must not be empty"),
    ],
)
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(ParamsError) as err:
        load_params(overrides=[override])
    assert fragment in str(err.value)


def test_unknown_key_lists_valid_keys(tmp_path):
    path = write(tmp_path, "geo:\n  backnd: zipcodes\n")
    with pytest.raises(ParamsError) as err:
        load_params(path)
    message = str(err.value)
    assert "geo.backnd" in message and "geo.backend" in message and "geo.uszipcode_db" in message


def test_the_old_ranking_group_names_its_new_key(tmp_path):
    """The rating model's group was `ranking:`; an old parameter file gets the new name, not a bare "unknown key"."""
    path = write(tmp_path, "ranking:\n  max_epochs: 3\n")
    with pytest.raises(ParamsError, match=r"'ranking' in .*p.yaml is now 'rating'"):
        load_params(path)
    with pytest.raises(ParamsError, match="is now 'rating'"):
        load_params(overrides=["ranking.max_epochs=3"])
    assert load_params(write(tmp_path, "rating:\n  max_epochs: 3\n"))["rating"]["max_epochs"] == 3


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "seed: 1\nsplit: [unclosed\n")
    with pytest.raises(ParamsError, match=r"p.yaml line \d+"):
        load_params(path)


def test_safe_loader_refuses_python_objects(tmp_path):
    path = write(tmp_path, "seed: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(path)


def test_missing_params_file(tmp_path):
    with pytest.raises(ParamsError, match="does not exist"):
        load_params(tmp_path / "nope.yaml")


def test_hash_is_stable_and_sensitive():
    assert params_hash(load_params()) == params_hash(load_params())
    assert params_hash(load_params()) != params_hash(load_params(overrides=["seed=1"]))


def test_shipped_parameter_files_validate():
    for path in sorted((PROJECT_ROOT / "params").glob("*.yaml")):
        load_params(path)


def test_notebook_parameter_cells_match_default_yaml():
    """An analyst running a notebook alone in Jupyter gets the same defaults as run_all.py."""
    defaults = yaml.safe_load(DEFAULT_PARAMS_FILE.read_text())
    notebooks = run_all.discover_notebooks()
    assert notebooks, "no notebooks found"
    for path in notebooks:
        notebook = nbformat.read(str(path), as_version=4)
        (cell,) = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
        for node in ast.parse(cell.source).body:
            assert isinstance(node, ast.Assign), f"{path.name}: parameters cell holds only assignments"
            name = node.targets[0].id
            value = ast.literal_eval(node.value)
            if name == "artifacts_dir":
                assert value == "../artifacts"
                continue
            assert name in defaults, f"{path.name}: parameter {name} is not in params/default.yaml"
            assert json.dumps(value, sort_keys=True) == json.dumps(defaults[name], sort_keys=True), (
                f"{path.name}: default of {name} differs from params/default.yaml"
            )


def test_each_notebook_opens_its_run_with_exactly_its_parameters():
    """By hand, a notebook checks its inputs against the values of all the keys it declares, and only those."""
    for path in run_all.discover_notebooks():
        notebook = nbformat.read(str(path), as_version=4)
        (cell,) = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
        declared = {node.targets[0].id for node in ast.parse(cell.source).body} - {"run_name", "artifacts_dir"}
        calls = [
            node
            for c in notebook.cells
            if c.cell_type == "code"
            for node in ast.walk(ast.parse(c.source))
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Run"
        ]
        assert len(calls) == 1, f"{path.name}: opens its run {len(calls)} times"
        args = calls[0].args
        assert len(args) == 4 and isinstance(args[2], ast.Name) and args[2].id == "STAGE", path.name
        passed = {key.value: value.id for key, value in zip(args[3].keys, args[3].values)}
        assert passed == {name: name for name in declared}, f"{path.name}: Run(...) gets {passed}, declares {declared}"
        assert f'STAGE = "{path.stem}"' in "".join(c.source for c in notebook.cells), path.name


def test_features_accept_groups_single_features_and_ids():
    assert load_params(overrides=["rating.features=[ids]"])["rating"]["features"] == ["ids"]
    assert load_params(overrides=["rating.features=[genres, hour]"])["rating"]["features"] == ["genres", "hour"]
