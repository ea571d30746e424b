"""A run's folder: where each registered artifact lives, metrics and figures, provenance when run by hand."""

from __future__ import annotations

import os
import resource
from pathlib import Path
from typing import Any

from recsys.core.io import save_figure, write_json
from recsys.runs.registry import MissingArtifactError, _registered, read_metrics, stage_number


class Run:
    """One run's folder, `artifacts/<run_name>/`, with a subfolder per notebook.

    A notebook opens its run with its own name and parameter values,
    `Run(artifacts_dir, run_name, STAGE, {"seed": seed, ...})`. Run by run_all.py, the runner has
    already checked its inputs and records its provenance. Run by hand in Jupyter, the notebook
    does both itself (recsys.runs.provenance): `require` refuses an input produced with other values
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
            from recsys.runs import provenance

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
                f"(python run_all.py --run-name {self.name} --until {stage_number(stage)})"
            )
        if self._by_hand is not None:
            from recsys.runs import provenance

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
            from recsys.runs import provenance

            provenance.record_by_hand(self.dir, stage, self.params, self._read, self._by_hand)
        return path

    def read_metrics(self, stage: str) -> dict:
        """A notebook's metrics.json ({} if it has not run)."""
        return read_metrics(self.dir, stage)

    def save_figure(self, fig: Any, stage: str, name: str) -> Path:
        """Save a matplotlib figure as PNG beside the notebook's other outputs (atomic)."""
        return save_figure(fig, self.stage_dir(stage) / f"{name}.png")
