"""What `run_all.py --changed` compares: the code fingerprint and the outputs asked for."""

from __future__ import annotations

import nbformat

from recsys.runs import freshness
from tests.notebook_fixtures import make_notebook


def test_the_library_fingerprint_follows_every_source_file(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "a.py").write_text("x = 1\n")
    first = freshness.library_fingerprint(package)
    assert freshness.library_fingerprint(package) == first
    (package / "sub" / "b.py").write_text("y = 2\n")  # a new module
    second = freshness.library_fingerprint(package)
    (package / "sub" / "b.py").write_text("y = 3\n")  # an edited one
    third = freshness.library_fingerprint(package)
    (package / "notes.txt").write_text("not code")
    assert len({first, second, third}) == 3 and freshness.library_fingerprint(package) == third


def test_the_code_fingerprint_reads_sources_and_versions_not_outputs(tmp_path):
    path = tmp_path / "01_preprocess.ipynb"
    make_notebook(path, "print('hi')")
    versions = {"tensorflow": "2.20.0"}
    base = freshness.code_fingerprint(path, "lib", versions)
    notebook = nbformat.read(str(path), as_version=4)
    notebook.cells[2].outputs = [nbformat.v4.new_output("stream", text="hi\n")]
    notebook.cells[2].execution_count = 3
    nbformat.write(notebook, str(path))
    assert freshness.code_fingerprint(path, "lib", versions) == base
    assert freshness.code_fingerprint(path, "lib2", versions) != base
    assert freshness.code_fingerprint(path, "lib", {"tensorflow": "2.21.0"}) != base
    notebook.cells[0].source += " (edited title)"  # a markdown cell is the report's text
    nbformat.write(notebook, str(path))
    assert freshness.code_fingerprint(path, "lib", versions) != base


def test_only_outputs_some_notebook_reads_are_asked_for():
    assert freshness.outputs_of("04_two_tower_rating", {"rating_model", "users"}) == ["metrics.json", "rating_model"]
    # rating_jobs (multi-worker logs) exists only under some settings and nothing reads it
    assert "distributed_jobs" not in freshness.outputs_of("04_two_tower_rating", {"rating_model"})
    assert freshness.outputs_of("02_eda", {"users"}) == ["metrics.json"]


def test_a_reader_reruns_when_its_producer_was_rerun_after_it_read(tmp_path):
    (tmp_path / "01_preprocess").mkdir()
    (tmp_path / "02_eda").mkdir()
    for stage in ("01_preprocess", "02_eda"):
        (tmp_path / stage / "metrics.json").write_text("{}")
    (tmp_path / "01_preprocess" / "users.parquet").write_text("x")
    params = {"seed": 1, "run_name": "r"}
    entries = {
        "01_preprocess": {"status": "ok", "code_hash": "a", "params": {"seed": 1}, "lineage_hash": "new"},
        "02_eda": {
            "status": "ok",
            "code_hash": "b",
            "params": {},
            "inputs": {"users": {"producer": "01_preprocess", "lineage_hash": "old"}},
        },
    }
    stages = [("01_preprocess", ["seed"], []), ("02_eda", [], ["users"])]
    reasons = freshness.rerun_reasons(
        stages, entries, params, {"01_preprocess": "a", "02_eda": "b"}, tmp_path, {"users"}
    )
    assert reasons == {"01_preprocess": None, "02_eda": "01_preprocess was rerun after it read users"}
    entries["02_eda"]["inputs"]["users"]["lineage_hash"] = "new"
    reasons = freshness.rerun_reasons(
        stages, entries, params, {"01_preprocess": "a", "02_eda": "b"}, tmp_path, {"users"}
    )
    assert reasons == {"01_preprocess": None, "02_eda": None}


def test_a_key_only_one_side_has_is_a_change_and_a_tuple_equals_its_list():
    recorded = {"rating": {"l2": 0.06, "grid": [1, 2]}, "seed": 1}
    assert freshness.params_changed(recorded, {"rating": {"l2": 0.06, "grid": (1, 2)}, "seed": 1}) == []
    added = freshness.params_changed(recorded, {"rating": {"l2": 0.06, "grid": [1, 2], "x": 0.2}, "seed": 1})
    assert added == ["rating.x: (none) -> 0.2"]
    assert freshness.params_changed(recorded, {"rating": {"l2": 0.05, "grid": [1, 2]}}) == [
        "rating.l2: 0.06 -> 0.05",
        "seed: 1 -> (none)",
    ]
