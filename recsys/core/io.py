"""Atomic file writes (a reader never sees a half-written file), JSON and Parquet, figures; the project root."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]


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
