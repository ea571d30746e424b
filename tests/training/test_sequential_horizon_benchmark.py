"""benchmarks/sequential_horizon.py: H chosen on val Recall@100 alone, on a tiny generated set."""

from __future__ import annotations

import json

from benchmarks import sequential_horizon
from recsys.data.synthetic import generate_synthetic

TINY = [
    "-p",
    "sequential.epochs=2",
    "-p",
    "sequential.history_length=8",
    "-p",
    "sequential.window_targets=8",
    "-p",
    "sequential.embedding_dim=8",
    "-p",
    "sequential.batch_size=16",
]


def all_keys(value) -> list[str]:
    if isinstance(value, dict):
        return [k for key, inner in value.items() for k in (key, *all_keys(inner))]
    if isinstance(value, list):
        return [k for inner in value for k in all_keys(inner)]
    return []


def test_horizon_is_chosen_on_val_recall_alone(tmp_path):
    data = generate_synthetic(tmp_path / "data", 80, 150, 30, 3, 0.5, seed=7)
    out = tmp_path / "sequential_horizon.json"
    args = ["--data-dir", str(data), "--horizons", "1", "3", "--out", str(out), *TINY]
    assert sequential_horizon.main(args) == 0

    result = json.loads(out.read_text())
    keys = all_keys(result)
    assert not [k for k in keys if "test" in k or "foldin" in k], f"not a val-only result: {keys}"
    assert result["split_strategy"] == "temporal" and result["chosen_on"] == "val_recall_at_100"
    rows = result["rows"]
    assert [row["target_horizon"] for row in rows] == [1, 3]
    for row in rows:
        assert set(row) == {
            "target_horizon",
            "best_val_recall_at_100",
            "best_epoch",
            "epochs_trained",
            "val_recall_at_100_by_epoch",
        }
        assert 1 <= row["best_epoch"] <= row["epochs_trained"] <= 2
        assert 0 < row["best_val_recall_at_100"] == max(row["val_recall_at_100_by_epoch"]) < 1
    best = max(rows, key=lambda row: row["best_val_recall_at_100"])
    assert result["chosen_target_horizon"] == best["target_horizon"]
    assert result["chosen_val_recall_at_100"] == best["best_val_recall_at_100"]


def test_a_tie_goes_to_the_smaller_horizon():
    rows = [{"target_horizon": h, "v": v} for h, v in [(1, 0.2), (5, 0.3), (10, 0.3), (20, 0.1)]]
    assert sequential_horizon.choose(rows, "v")["target_horizon"] == 5
