"""Load a MovieLens release (downloaded, local, or generated) into one schema, checked strictly by the parsers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from recsys.core.io import atomic_dir
from recsys.data.download import fetch_dataset, locate_files
from recsys.data.movielens import (
    DATASETS,
    KNOWN_DATASETS,
    SYNTHETIC_FORMATS,
    DataError,
)
from recsys.data.parsing import MovieLensData, _parse_movies, _parse_ratings, _parse_users, users_of
from recsys.data.synthetic import SYNTHETIC_VERSION, generate_synthetic, generate_synthetic_csv, max_ratings_per_user


def read_movielens(fmt: str, data_dir: Path) -> MovieLensData:
    """Read and strictly check one MovieLens folder into the project's single schema: every later
    stage trusts these tables, so a malformed line is reported here, with its file, line and value.

    Args:
        fmt: a release of `movielens.DATASETS`: "ml-1m" (also the synthetic data), "ml-100k",
            "ml-10m", "ml-20m" or "ml-25m".
        data_dir: the folder holding the files, or its parent (see `locate_files`).

    Returns:
        MovieLensData with users (user_id int32, and where the release has a users file gender,
        age int16, occupation, zip_code), movies (movie_id int32, title, genres "A|B") and
        ratings (user_id int32, movie_id int32, rating: int8 on whole-star scales, float32 on
        half-star ones, timestamp int64), and the release's spec (scale, feature groups).

    Raises:
        DataError: a file is missing or malformed.
    """
    if fmt not in DATASETS:
        raise DataError(f"unknown file format {fmt!r}: expected one of {', '.join(DATASETS)}")
    spec = DATASETS[fmt]
    files = locate_files(fmt, data_dir)
    if spec.layout == "csv":
        from recsys.data.csv_release import read_csv_movies, read_csv_ratings

        movies = read_csv_movies(files["movies"])
        ratings = read_csv_ratings(files["ratings"], spec, movies, files)
    else:
        users = _parse_users(files["users"], spec.layout) if "users" in files else None
        movies = _parse_movies(files["movies"], spec.layout)
        ratings = _parse_ratings(files["ratings"], spec, users, movies, files)
    if "users" not in files:
        users = users_of(ratings)
    return MovieLensData(users, movies, ratings, str(files["ratings"].parent.resolve()), files, spec)


def load_dataset(
    dataset: str, data_dir: str | None, download: dict, synthetic: dict, seed: int, project_root: Path
) -> MovieLensData:
    """Load the dataset a run asks for: the one place notebooks get their data from, so a local
    folder, a verified download and a generated set give the same schema and the same checks.

    Args:
        dataset: one of movielens.KNOWN_DATASETS.
        data_dir: folder with the extracted files (relative to the current dir); if set, it is
            read and nothing is downloaded. None or "" downloads (or generates) into the cache.
        download: the params `download` group (sources, cache_dir, timeout_s).
        synthetic: the params `synthetic` group: `format` (ml-1m: generate_synthetic's files;
            ml-25m: generate_synthetic_csv's, n_users x ratings_per_user ratings) and the sizes.
        seed: the run seed; it also seeds the synthetic generator.
        project_root: the folder `download["cache_dir"]` is relative to.

    Returns:
        The parsed MovieLensData.

    Raises:
        DataError: unknown dataset or synthetic format, or missing/malformed files.
        DownloadError: no download source worked.
    """
    if dataset not in KNOWN_DATASETS:
        raise DataError(
            f"unknown dataset {dataset!r}: choose one of {', '.join(KNOWN_DATASETS)} (e.g. `-p dataset=ml-1m`)."
        )
    fmt = _synthetic_format(synthetic) if dataset == "synthetic" else dataset
    if data_dir:
        return read_movielens(fmt, Path(data_dir).expanduser())
    cache_dir = Path(project_root) / download["cache_dir"]
    if dataset == "synthetic":
        key = json.dumps({"params": synthetic, "seed": seed, "generator": SYNTHETIC_VERSION}, sort_keys=True)
        folder = cache_dir / f"synthetic-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
        if not all((folder / f).is_file() for f in DATASETS[fmt].files.values()):
            _generate(folder, fmt, synthetic, seed)
        return read_movielens(fmt, folder)
    folder = fetch_dataset(dataset, download["sources"], cache_dir, download["timeout_s"])
    return read_movielens(dataset, folder)


def _synthetic_format(synthetic: dict) -> str:
    """The release whose files `synthetic` asks for, checked before anything is written."""
    fmt = synthetic.get("format", "ml-1m")
    if fmt not in SYNTHETIC_FORMATS:
        raise DataError(f"synthetic.format {fmt!r} is not one the generator writes: choose one of {SYNTHETIC_FORMATS}")
    cap, per_user = max_ratings_per_user(synthetic.get("n_movies", 0)), synthetic.get("ratings_per_user", 0)
    if fmt == "ml-25m" and per_user > cap:
        raise DataError(
            f"synthetic.ratings_per_user={per_user} is more than a user of the ML-25M format may rate: {cap} (60% "
            f"of synthetic.n_movies={synthetic['n_movies']}); lower it or raise n_movies"
        )
    return fmt


def _generate(folder: Path, fmt: str, synthetic: dict, seed: int) -> None:
    """Write the synthetic files of `synthetic` in the format `fmt` into `folder`, whole or not at all."""
    sizes = {name: synthetic[name] for name in ("n_users", "n_movies", "n_factors", "noise")}
    per_user = synthetic["ratings_per_user"]
    with atomic_dir(folder) as tmp:
        if fmt == "ml-1m":
            generate_synthetic(Path(tmp), ratings_per_user=per_user, seed=seed, **sizes)
        else:
            generate_synthetic_csv(Path(tmp), n_ratings=sizes["n_users"] * per_user, seed=seed, **sizes)
