"""The strict parser of the ML-100K and ML-1M files: every bad line is an error naming file, line and value."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pandas as pd

from recsys.data.movielens import (
    ML1M_AGE_CODES,
    ML100K_GENRES,
    DataError,
    DatasetSpec,
)

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
