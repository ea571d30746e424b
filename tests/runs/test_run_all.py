"""run_all.py: selection, listing, validation before any notebook starts, and failure reporting."""

from __future__ import annotations

import json

import nbformat
import pytest

import run_all
from tests.notebook_fixtures import make_notebook


@pytest.fixture
def notebooks_dir(tmp_path, monkeypatch):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    monkeypatch.setattr(run_all, "NOTEBOOKS_DIR", folder)
    return folder


def test_discovery_orders_and_selects(notebooks_dir):
    for name in ("02_b", "01_a", "10_c"):
        make_notebook(notebooks_dir / f"{name}.ipynb", "x = 1")
    found = run_all.discover_notebooks(notebooks_dir)
    assert [p.stem for p in found] == ["01_a", "02_b", "10_c"]
    assert [p.stem for p in run_all.select_notebooks(found, ["2"], None, None)] == ["02_b"]
    assert [p.stem for p in run_all.select_notebooks(found, None, "02", None)] == ["02_b", "10_c"]
    assert [p.stem for p in run_all.select_notebooks(found, None, None, "02")] == ["01_a", "02_b"]
    with pytest.raises(run_all.RunnerError, match="no such notebook"):
        run_all.select_notebooks(found, ["07"], None, None)


def test_a_lettered_notebook_runs_between_its_neighbours(notebooks_dir):
    """05b_x is inserted after 05 and before 06: it is found, ordered and selected by its own number."""
    for name in ("06_c", "05b_x", "05_a", "04_z"):
        make_notebook(notebooks_dir / f"{name}.ipynb", "x = 1")
    found = run_all.discover_notebooks(notebooks_dir)
    assert [p.stem for p in found] == ["04_z", "05_a", "05b_x", "06_c"]
    assert [p.stem for p in run_all.select_notebooks(found, ["5b"], None, None)] == ["05b_x"]
    assert [p.stem for p in run_all.select_notebooks(found, None, "05b", None)] == ["05b_x", "06_c"]
    assert [p.stem for p in run_all.select_notebooks(found, None, "05", "05b_x")] == ["05_a", "05b_x"]
    assert [p.stem for p in run_all.select_notebooks(found, None, None, "05")] == ["04_z", "05_a"]
    with pytest.raises(run_all.RunnerError, match="no such notebook"):
        run_all.select_notebooks(found, ["05c"], None, None)


def test_list_prints_reads_and_writes(capsys):
    assert run_all.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "01_preprocess" in out and "writes: users, movies, interactions" in out
    assert "reads:  users (01_preprocess)" in out


def test_bad_params_stop_before_any_notebook(tmp_path, capsys):
    assert run_all.main(["--artifacts-dir", str(tmp_path), "-p", "split.stratgy=x"]) == 2
    assert "did you mean 'strategy'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_missing_inputs_named_before_running(tmp_path, capsys):
    assert run_all.main(["--artifacts-dir", str(tmp_path), "--only", "02"]) == 2
    err = capsys.readouterr().err
    assert "02_eda needs users from 01_preprocess" in err and "run notebook 01_preprocess first" in err


def test_failing_notebook_is_named_rendered_and_stops(tmp_path, notebooks_dir, capsys):
    make_notebook(notebooks_dir / "01_ok.ipynb", "print('fine')")
    make_notebook(notebooks_dir / "02_broken.ipynb", "raise ValueError('ratings.dat line 3: rating 7 is outside 1..5')")
    make_notebook(notebooks_dir / "03_never.ipynb", "print('never')")
    code = run_all.main(["--artifacts-dir", str(tmp_path / "artifacts"), "--run-name", "failing"])
    assert code == 1
    err = capsys.readouterr().err
    assert "notebook 02_broken failed at cell [3] (ValueError): ratings.dat line 3: rating 7 is outside 1..5" in err
    run_dir = tmp_path / "artifacts" / "failing"
    assert "ValueError" in (run_dir / "reports" / "02_broken.html").read_text()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [n["status"] for n in manifest["notebooks"]] == ["ok", "failed", "pending"]
    assert not (run_dir / "reports" / "03_never.html").exists()
    assert "02_broken" in (run_dir / "reports" / "index.html").read_text()


def test_unknown_notebook_parameter_rejected(tmp_path, notebooks_dir, capsys):
    make_notebook(notebooks_dir / "01_x.ipynb", "pass")
    notebook = nbformat.read(str(notebooks_dir / "01_x.ipynb"), as_version=4)
    notebook.cells[1].source += "\nlearning_rat = 0.1"
    nbformat.write(notebook, str(notebooks_dir / "01_x.ipynb"))
    assert run_all.main(["--artifacts-dir", str(tmp_path)]) == 2
    assert "declares parameter(s) learning_rat" in capsys.readouterr().err


def test_partial_run_keeps_the_other_notebooks_in_the_index(tmp_path, notebooks_dir):
    for name in ("01_a", "02_b", "03_c"):
        make_notebook(notebooks_dir / f"{name}.ipynb", "print('hi')")
    artifacts = str(tmp_path / "artifacts")
    assert run_all.main(["--artifacts-dir", artifacts, "--run-name", "r"]) == 0
    assert run_all.main(["--artifacts-dir", artifacts, "--run-name", "r", "--only", "02"]) == 0
    run_dir = tmp_path / "artifacts" / "r"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [(n["name"], n.get("earlier_run", False)) for n in manifest["notebooks"]] == [
        ("01_a", True),
        ("02_b", False),
        ("03_c", True),
    ]
    index = (run_dir / "reports" / "index.html").read_text()
    assert all(f'href="{name}.html"' in index for name in ("01_a", "02_b", "03_c"))


def test_list_metrics_are_read_back_by_the_run_summary(tmp_path):
    import pandas as pd

    from recsys.runs.artifacts import Run
    from recsys.runs.report import list_metrics, strategy_table

    results = pd.DataFrame(
        {
            "recall_at_10": [0.3, 0.1],
            "ndcg_at_10": [0.2, 0.1],
            "coverage_at_10": [0.4, 0.6],
            "novelty": [3.0, 4.0],
            "intra_list_diversity": [0.6, 0.7],
            "gini": [0.9, 0.8],
            "share": [0.0, 0.5],
        },
        index=["plain", "explore"],
    )
    written = list_metrics(results, extra=("share",))
    assert written["recall_at_10_plain"] == 0.3 and written["share_explore"] == 0.5 and len(written) == 14
    Run(tmp_path, "r").write_metrics("07_explore_weighted_sampling", written)
    rows = strategy_table(tmp_path / "r")
    assert sorted((r["strategy"], r["recall_at_10"], r["gini"]) for r in rows) == [
        ("explore", 0.1, 0.8),
        ("plain", 0.3, 0.9),
    ]


def test_split_comparison_lists_runs_on_the_same_data_with_another_strategy(tmp_path):
    import json

    from recsys.runs.report import split_comparison

    def fake_run(name, strategy, seed=42, dataset="ml-1m"):
        folder = tmp_path / name
        (folder / "05_retrieval").mkdir(parents=True)
        params = {"dataset": dataset, "data_dir": "d", "seed": seed, "split": {"strategy": strategy}}
        (folder / "manifest.json").write_text(json.dumps({"params": params}))
        metrics = {"recall_at_10_sequential": 0.2 if strategy == "temporal" else 0.1, "recall_at_10_ease": 0.15}
        (folder / "05_retrieval" / "metrics.json").write_text(json.dumps(metrics))
        return folder

    random_run = fake_run("a-random", "random")
    assert split_comparison(random_run) == []  # alone: nothing to compare
    fake_run("b-temporal", "temporal")
    fake_run("c-other-seed", "temporal", seed=7)
    fake_run("d-other-data", "temporal", dataset="ml-100k")
    (tmp_path / "e-broken").mkdir()
    rows = split_comparison(random_run)
    assert [(r["run"], r["strategy"]) for r in rows] == [("a-random", "random"), ("b-temporal", "temporal")]
    assert rows[1]["recall_at_10_sequential"] == 0.2 and rows[0]["recall_at_100_two_tower"] is None


def _writes(stage: str, *files: str) -> str:
    """A notebook body that writes `files` (and metrics.json) into its stage folder and says it ran."""
    return (
        "from pathlib import Path\n"
        f"folder = Path(artifacts_dir) / run_name / {stage!r}\n"
        "folder.mkdir(parents=True, exist_ok=True)\n"
        f"for name in {list(files)!r}:\n"
        "    (folder / name).write_text('x')\n"
        "(folder / 'metrics.json').write_text('{}')\n"
    )


@pytest.fixture
def small_chain(notebooks_dir):
    """01 -> (04, 05) -> 06, as the real chain: 04 and 05 read 01's users, 06 reads both models."""
    make_notebook(notebooks_dir / "01_preprocess.ipynb", _writes("01_preprocess", "users.parquet"), params={"seed": 1})
    make_notebook(
        notebooks_dir / "04_two_tower_rating.ipynb",
        _writes("04_two_tower_rating", "rating_model"),
        reads=["users"],
        params={"rating": {}},
    )
    make_notebook(
        notebooks_dir / "05_retrieval.ipynb",
        _writes("05_retrieval", "retrieval_model"),
        reads=["users"],
        params={"retrieval": {}},
    )
    make_notebook(
        notebooks_dir / "06_retrieval_ranking.ipynb",
        _writes("06_retrieval_ranking"),
        reads=["rating_model", "retrieval_model"],
        params={"online": {}},
    )
    return notebooks_dir


def _ran(run_dir) -> list[str]:
    """The notebooks the last invocation executed (the others keep their earlier entries)."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return [entry["name"] for entry in manifest["notebooks"] if not entry.get("earlier_run")]


def test_changed_reruns_only_what_a_change_reaches(tmp_path, small_chain, capsys):
    artifacts = ["--artifacts-dir", str(tmp_path / "artifacts"), "--run-name", "r"]
    run_dir = tmp_path / "artifacts" / "r"
    assert run_all.main(artifacts) == 0
    assert all("code_hash" in entry for entry in json.loads((run_dir / "manifest.json").read_text())["notebooks"])
    before = (run_dir / "manifest.json").read_text()
    capsys.readouterr()

    assert run_all.main([*artifacts, "--changed"]) == 0  # nothing changed: nothing runs, the manifest is untouched
    assert "every selected notebook is up to date" in capsys.readouterr().out
    assert (run_dir / "manifest.json").read_text() == before

    # a changed parameter of a notebook outside the selection is refused, as without --changed (plan included)
    for extra in ([], ["--list"]):
        assert run_all.main([*artifacts, "--changed", *extra, "--from", "06", "-p", "rating.l2=0.05"]) == 2
        assert "04_two_tower_rating: it ran with rating.l2: 0.06 -> 0.05" in capsys.readouterr().err

    # with --list, the plan only: what would rerun and why, with what those notebooks took last time
    assert run_all.main([*artifacts, "--changed", "--list", "-p", "rating.l2=0.05"]) == 0
    plan = capsys.readouterr().out
    assert "04_two_tower_rating: reruns: its parameters changed: rating.l2: 0.06 -> 0.05" in plan
    assert "2 of 4 rerun; their last runs here took" in plan
    assert (run_dir / "manifest.json").read_text() == before

    # a parameter only 04 reads: 04 and its reader 06 rerun; 01 and 05 (which does not read 04) do not
    assert run_all.main([*artifacts, "--changed", "-p", "rating.l2=0.05"]) == 0
    out = capsys.readouterr().out
    assert _ran(run_dir) == ["04_two_tower_rating", "06_retrieval_ranking"]
    assert "04_two_tower_rating: reruns: its parameters changed: rating.l2: 0.06 -> 0.05" in out
    assert "06_retrieval_ranking: reruns: 04_two_tower_rating reruns, and it reads rating_model" in out
    assert "05_retrieval: up to date, skipped" in out

    # an edited cell reruns that notebook and its readers; saved outputs alone change nothing
    notebook = nbformat.read(str(small_chain / "05_retrieval.ipynb"), as_version=4)
    notebook.cells[2].outputs = [nbformat.v4.new_output("stream", text="an output saved from Jupyter\n")]
    nbformat.write(notebook, str(small_chain / "05_retrieval.ipynb"))
    assert run_all.main([*artifacts, "--changed", "-p", "rating.l2=0.05"]) == 0
    assert "every selected notebook is up to date" in capsys.readouterr().out
    notebook.cells[2].source += "\nprint('edited')"
    nbformat.write(notebook, str(small_chain / "05_retrieval.ipynb"))
    assert run_all.main([*artifacts, "--changed", "-p", "rating.l2=0.05"]) == 0
    assert "05_retrieval: reruns: its code changed" in capsys.readouterr().out
    assert _ran(run_dir) == ["05_retrieval", "06_retrieval_ranking"]

    # a deleted output reruns its writer and everything downstream of it
    (run_dir / "01_preprocess" / "users.parquet").unlink()
    assert run_all.main([*artifacts, "--changed", "-p", "rating.l2=0.05"]) == 0
    assert "01_preprocess: reruns: its output users.parquet is missing" in capsys.readouterr().out
    assert _ran(run_dir) == ["01_preprocess", "04_two_tower_rating", "05_retrieval", "06_retrieval_ranking"]


def test_changed_reruns_a_failed_notebook_and_one_recorded_without_a_fingerprint(tmp_path, notebooks_dir, capsys):
    make_notebook(notebooks_dir / "01_preprocess.ipynb", _writes("01_preprocess", "users.parquet"), params={"seed": 1})
    make_notebook(notebooks_dir / "02_eda.ipynb", "raise ValueError('not yet')", reads=["users"])
    artifacts = ["--artifacts-dir", str(tmp_path / "artifacts"), "--run-name", "r"]
    run_dir = tmp_path / "artifacts" / "r"
    assert run_all.main(artifacts) == 1
    make_notebook(notebooks_dir / "02_eda.ipynb", _writes("02_eda"), reads=["users"])
    capsys.readouterr()
    assert run_all.main([*artifacts, "--changed"]) == 0
    assert "02_eda: reruns: its last run ended 'failed'" in capsys.readouterr().out
    assert _ran(run_dir) == ["02_eda"]
    manifest = json.loads((run_dir / "manifest.json").read_text())  # as an entry written by hand in Jupyter
    del manifest["notebooks"][0]["code_hash"]
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    assert run_all.main([*artifacts, "--changed"]) == 0
    assert "01_preprocess: reruns: its last run recorded no code fingerprint" in capsys.readouterr().out
    assert _ran(run_dir) == ["01_preprocess", "02_eda"]
