"""Read MovieLens into one schema and check it strictly: every bad line is an error naming file, line and value."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pandas as pd

from recsys.artifacts import atomic_dir
from recsys.download import fetch_dataset, locate_files
from recsys.movielens import (
    DATASETS,
    KNOWN_DATASETS,
    ML1M_AGE_CODES,
    ML100K_GENRES,
    SYNTHETIC_FORMATS,
    DataError,
    DatasetSpec,
)
from recsys.synthetic import SYNTHETIC_VERSION, generate_synthetic, generate_synthetic_csv, max_ratings_per_user

_FIX_LINE = "Fix or remove that line, or replace the file with the one from the original MovieLens zip."
_INT_RE = r"[+-]?\d+"


@dataclass
class MovieLensData:
    """The three MovieLens tables in one schema, whatever the release they came from."""

    users: pd.DataFrame
    movies: pd.DataFrame
    ratings: pd.DataFrame
    source: str  # human-readable: the folder the files were read from
    files: dict[str, Path]
    spec: DatasetSpec  # the release: its rating scale and the feature groups it offers


def fail_at_line(path: Path, row: int, message: str, fix: str = _FIX_LINE) -> NoReturn:
    raise DataError(f"{path} line {row + 1}: {message}. {fix}")


def shorten(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


class _Table:
    """One delimited file: checked line by line with vectorised code, then parsed by pandas' C parser."""

    def __init__(
        self, path: Path, sep: str, columns: tuple[str, ...], str_columns: tuple[str, ...], encoding: str = "latin-1"
    ):
        self.path, self.encoding = path, encoding
        raw = path.read_bytes()
        # Trailing blank lines are harmless; normalising CRLF keeps line numbers exact.
        data = raw.rstrip(b"\r\n").replace(b"\r\n", b"\n")
        if sep == "::":
            if b"\x1f" in data:
                self._fail_at_byte(data, data.index(b"\x1f"), "unexpected control character \\x1f")
            # pandas' C parser wants a one-character separator; \x1f never occurs in MovieLens.
            data = data.replace(b"::", b"\x1f")
            sep = "\x1f"
        if b"\r" in data:
            self._fail_at_byte(data, data.index(b"\r"), "stray carriage return inside a line")
        if not data:
            raise DataError(f"{path} is empty. Replace it with the file from the original MovieLens zip.")
        shown_sep = {"\x1f": "::", "\t": "\\t"}.get(sep, sep)
        self._check_field_counts(data, sep, len(columns), shown_sep)
        self.data, self.sep, self.columns = data, sep, columns
        try:
            self.df = self._read(dtype=dict.fromkeys(str_columns, str))
        except pd.errors.ParserError as exc:  # the field-count check should make this unreachable
            match = re.search(r"line (\d+)", str(exc))
            row = int(match.group(1)) - 1 if match else 0
            fail_at_line(path, row, f"cannot be parsed ({exc})")

    def _read(self, **kwargs: Any) -> pd.DataFrame:
        return pd.read_csv(
            io.BytesIO(self.data),
            sep=self.sep,
            header=None,
            names=list(self.columns),
            index_col=False,
            engine="c",
            encoding=self.encoding,
            quoting=csv.QUOTE_NONE,
            na_filter=False,
            skip_blank_lines=False,
            **kwargs,
        )

    def _fail_at_byte(self, data: bytes, offset: int, message: str) -> NoReturn:
        row = data.count(b"\n", 0, offset)
        fail_at_line(self.path, row, message)

    def _check_field_counts(self, data: bytes, sep: str, n_fields: int, shown_sep: str) -> None:
        # Counting separators per line in numpy finds a truncated line, an extra field or a blank
        # line with its exact line number, without a Python loop over a million lines.
        buf = np.frombuffer(data, dtype=np.uint8)
        newlines = np.flatnonzero(buf == ord("\n"))
        n_lines = len(newlines) + 1
        seps = np.flatnonzero(buf == ord(sep))
        fields = np.bincount(np.searchsorted(newlines, seps), minlength=n_lines) + 1
        starts = np.concatenate(([0], newlines + 1))
        ends = np.concatenate((newlines, [len(buf)]))
        bad = np.flatnonzero((fields != n_fields) | (ends == starts))
        if len(bad):
            row = int(bad[0])
            line = data[starts[row] : ends[row]].decode(self.encoding, errors="replace").replace("\x1f", "::")
            if not line:
                fail_at_line(self.path, row, "blank line inside the file")
            fail_at_line(
                self.path,
                row,
                f"expected {n_fields} fields separated by '{shown_sep}', found {fields[row]}: '{shorten(line)}'",
            )

    def raw(self, column: str) -> pd.Series:
        """The column exactly as written in the file, to report a bad value verbatim."""
        return self._read(usecols=[column], dtype=str)[column]

    def ints(
        self,
        column: str,
        what: str,
        *,
        lo: int | None = None,
        hi: int | None = None,
        allowed: tuple[int, ...] | None = None,
        not_int: str = "is not an integer",
    ) -> np.ndarray:
        """The column as int64, or a DataError naming the first bad line and value."""
        values = self.df[column]
        if not pd.api.types.is_integer_dtype(values.dtype):
            raw = self.raw(column)
            bad = ~raw.str.fullmatch(_INT_RE)
            if bad.any():
                row = int(np.argmax(bad.to_numpy()))
                fail_at_line(self.path, row, f"{what} '{shorten(raw.iloc[row])}' {not_int}")
            # Every value is written as an integer, so only the int64 range can be the problem.
            values = pd.to_numeric(raw, errors="coerce")
            too_large = np.abs(values.to_numpy(dtype=float)) >= 2.0**62
            if too_large.any():
                row = int(np.argmax(too_large))
                fail_at_line(self.path, row, f"{what} '{shorten(raw.iloc[row])}' is too large")
        array = values.to_numpy(dtype=np.int64)
        if lo is not None or hi is not None:
            outside = np.zeros(len(array), dtype=bool)
            if lo is not None:
                outside |= array < lo
            if hi is not None:
                outside |= array > hi
            if outside.any():
                row = int(np.argmax(outside))
                bounds = f"{lo}..{hi}" if hi is not None else f">= {lo}"
                fail_at_line(self.path, row, f"{what} '{array[row]}' is outside {bounds}")
        if allowed is not None:
            unknown = ~np.isin(array, allowed)
            if unknown.any():
                row = int(np.argmax(unknown))
                fail_at_line(self.path, row, f"{what} '{array[row]}' is not one of {', '.join(map(str, allowed))}")
        return array

    def ratings(self, column: str, scale: tuple[float, float], step: float) -> np.ndarray:
        """The rating column checked against the release's scale: int8 for whole stars, float32 for half stars."""
        if step == 1:
            lo, hi = int(scale[0]), int(scale[1])
            return self.ints(column, "rating", lo=lo, hi=hi, not_int=f"is not an integer {lo}..{hi}").astype(np.int8)
        values = pd.to_numeric(self.df[column], errors="coerce").to_numpy(np.float64)
        return check_ratings(self.path, values, lambda: self.raw(column), scale, step, first_line=0)

    def strings(
        self, column: str, what: str, *, allowed: tuple[str, ...] | None = None, non_empty: bool = False
    ) -> pd.Series:
        """The column as str, or a DataError naming the first bad line and value."""
        values = self.df[column].astype(str)
        if allowed is not None:
            bad = ~values.isin(allowed)
            if bad.any():
                row = int(np.argmax(bad.to_numpy()))
                fail_at_line(self.path, row, f"{what} '{shorten(values.iloc[row])}' is not one of {', '.join(allowed)}")
        if non_empty:
            empty = (values.str.strip() == "").to_numpy()
            if empty.any():
                fail_at_line(self.path, int(np.argmax(empty)), f"{what} is empty")
        return values

    def unique_ids(self, ids: np.ndarray, what: str) -> None:
        """A DataError if an id appears twice, naming both lines."""
        duplicated = pd.Series(ids).duplicated().to_numpy()
        if duplicated.any():
            row = int(np.argmax(duplicated))
            first = int(np.argmax(ids == ids[row]))
            fail_at_line(self.path, row, f"{what} '{ids[row]}' is repeated (first on line {first + 1})")


def check_ratings(
    path: Path, values: np.ndarray, raw, scale: tuple[float, float], step: float, first_line: int
) -> np.ndarray:
    """Ratings as float32 if every one is a number on the scale and a multiple of `step`, else a DataError.

    Args:
        values: the parsed ratings (NaN where the text is not a number).
        raw: () -> the column's text, read only to quote a bad value verbatim.
        first_line: the 0-based line of the first rating (1 after a header).
    """
    lo, hi = scale
    bad_number = np.isnan(values)
    off_scale = ~bad_number & ((values < lo) | (values > hi))
    off_step = ~bad_number & ~off_scale & (np.abs(values / step - np.round(values / step)) > 1e-9)
    for mask, problem in (
        (bad_number, "is not a number"),
        (off_scale, f"is outside the scale {lo:g}..{hi:g}"),
        (off_step, f"is not a multiple of {step:g} (the scale has steps of {step:g})"),
    ):
        if mask.any():
            row = int(np.argmax(mask))
            fail_at_line(path, first_line + row, f"rating '{shorten(str(raw().iloc[row]))}' {problem}")
    return values.astype(np.float32)


def _id_column(table: _Table, column: str, what: str) -> np.ndarray:
    return table.ints(column, what, lo=1, hi=np.iinfo(np.int32).max).astype(np.int32)


def _parse_users(path: Path, fmt: str) -> pd.DataFrame:
    if fmt == "ml-1m":
        columns = ("user_id", "gender", "age", "occupation", "zip_code")
    else:
        columns = ("user_id", "age", "gender", "occupation", "zip_code")
    str_columns = ("gender", "zip_code") + (("occupation",) if fmt == "ml-100k" else ())
    table = _Table(path, "::" if fmt == "ml-1m" else "|", columns, str_columns)
    user_id = _id_column(table, "user_id", "user id")
    table.unique_ids(user_id, "user id")
    gender = table.strings("gender", "gender", allowed=("M", "F"))
    if fmt == "ml-1m":
        age = table.ints("age", "age code", allowed=ML1M_AGE_CODES)
        # ML-1M stores the occupation as a code 0..20; the schema keeps it a string.
        occupation = pd.Series(table.ints("occupation", "occupation code", lo=0, hi=20)).astype(str)
    else:
        age = table.ints("age", "age", lo=1, hi=120)
        occupation = table.strings("occupation", "occupation", non_empty=True)
    return pd.DataFrame(
        {
            "user_id": user_id,
            "gender": gender.to_numpy(),
            "age": age.astype(np.int16),
            "occupation": occupation.to_numpy(),
            "zip_code": table.df["zip_code"].astype(str).to_numpy(),
        }
    ).astype({"gender": "str", "occupation": "str", "zip_code": "str"})


def _text_encoding(path: Path) -> str:
    """UTF-8 if the file decodes as UTF-8, else latin-1 (ML-1M's; ML-10M's titles are read either way)."""
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return "latin-1"
    return "utf-8"


def _parse_movies(path: Path, fmt: str) -> pd.DataFrame:
    if fmt in ("ml-1m", "ml-10m"):
        encoding = "latin-1" if fmt == "ml-1m" else _text_encoding(path)
        table = _Table(path, "::", ("movie_id", "title", "genres"), ("title", "genres"), encoding)
        genres = table.strings("genres", "genres")
    else:
        flag_columns = tuple(f"flag_{i}" for i in range(len(ML100K_GENRES)))
        columns = ("movie_id", "title", "release_date", "video_release_date", "imdb_url") + flag_columns
        table = _Table(path, "|", columns, ("title", "release_date", "video_release_date", "imdb_url"))
        genres = pd.Series("", index=table.df.index, dtype="str")
        for genre, column in zip(ML100K_GENRES, flag_columns):
            flag = table.ints(column, f"genre flag '{genre}'", lo=0, hi=1).astype(bool)
            genres = genres + np.where(flag, genre + "|", "")
        genres = genres.str.removesuffix("|")
    movie_id = _id_column(table, "movie_id", "movie id")
    table.unique_ids(movie_id, "movie id")
    title = table.strings("title", "title", non_empty=True)
    return pd.DataFrame({"movie_id": movie_id, "title": title.to_numpy(), "genres": genres.to_numpy()}).astype(
        {"title": "str", "genres": "str"}
    )


def _parse_ratings(
    path: Path, spec: DatasetSpec, users: pd.DataFrame | None, movies: pd.DataFrame, files: dict[str, Path]
) -> pd.DataFrame:
    columns = ("user_id", "movie_id", "rating", "timestamp")
    table = _Table(path, "\t" if spec.layout == "ml-100k" else "::", columns, ())
    user_id = _id_column(table, "user_id", "user id")
    movie_id = _id_column(table, "movie_id", "movie id")
    rating = table.ratings("rating", spec.rating_scale, spec.rating_step)
    timestamp = table.ints("timestamp", "timestamp", not_int="is not a number (seconds since 1970-01-01)")
    known_ids = [(movie_id, movies["movie_id"], "movie id", files["movies"])]
    if users is not None:
        known_ids.insert(0, (user_id, users["user_id"], "user id", files["users"]))
    return checked_ratings(path, user_id, movie_id, rating, timestamp, known_ids)


def checked_ratings(
    path: Path,
    user_id: np.ndarray,
    movie_id: np.ndarray,
    rating: np.ndarray,
    timestamp: np.ndarray,
    known_ids: list,
    first_line: int = 0,
) -> pd.DataFrame:
    """The ratings table, once every id is known (`known_ids`: (ids, known, what, file)) and no pair repeats."""
    for ids, known, what, file in known_ids:
        unknown = ~np.isin(ids, known.to_numpy())
        if unknown.any():
            fail_at_line(
                path,
                first_line + int(np.argmax(unknown)),
                f"{what} '{ids[np.argmax(unknown)]}' is not in {file.name}",
                f"Use the {file.name} that came with this {path.name} (same MovieLens zip).",
            )
    ratings = pd.DataFrame({"user_id": user_id, "movie_id": movie_id, "rating": rating, "timestamp": timestamp})
    # A pair rated twice would leak between train and test splits.
    repeated = ratings.duplicated(["user_id", "movie_id"]).to_numpy()
    if repeated.any():
        row = int(np.argmax(repeated))
        first = int(np.argmax((user_id == user_id[row]) & (movie_id == movie_id[row])))
        fail_at_line(
            path,
            first_line + row,
            f"user '{user_id[row]}' rates movie '{movie_id[row]}' again (first on line {first_line + first + 1})",
        )
    return ratings


def users_of(ratings: pd.DataFrame) -> pd.DataFrame:
    """The users table of a release without a users file: every user id that rates, and nothing else known."""
    return pd.DataFrame({"user_id": np.unique(ratings["user_id"].to_numpy()).astype(np.int32)})


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
        from recsys.csv_release import read_csv_movies, read_csv_ratings

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
