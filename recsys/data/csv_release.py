"""The CSV releases (ML-20M, ML-25M): comma-separated with a header, quoted titles, UTF-8, half-star ratings.

Read by pandas' C parser with the columns' dtypes (25 million ratings in seconds); the checks are
vectorised, and a bad line is reported with its file, line number (the header is line 1) and value.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.data.movielens import CSV_HEADERS, DataError, DatasetSpec
from recsys.data.parsing import check_ratings, checked_ratings, fail_at_line, shorten

_FIX_HEADER = "The file must start with GroupLens's header line; use the file from the original MovieLens zip."


def _content(path: Path, kind: str) -> bytes:
    """The file's bytes after checking its header and that it is UTF-8 (line numbers kept exact)."""
    data = path.read_bytes().rstrip(b"\r\n").replace(b"\r\n", b"\n")
    if not data:
        raise DataError(f"{path} is empty. Replace it with the file from the original MovieLens zip.")
    if b"\r" in data:  # a lone CR would end a line for the parser but not for the line count
        fail_at_line(path, data.count(b"\n", 0, data.index(b"\r")), "stray carriage return inside a line")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        bad = data[error.start : error.start + 4]
        fail_at_line(
            path, data.count(b"\n", 0, error.start), f"bytes {bad!r} are not UTF-8 (the CSV releases are UTF-8)"
        )
    header = data.split(b"\n", 1)[0].decode("utf-8")
    if header != CSV_HEADERS[kind]:
        fail_at_line(path, 0, f"header '{shorten(header)}' is not '{CSV_HEADERS[kind]}'", _FIX_HEADER)
    return data


def _read(path: Path, data: bytes, names: list[str], dtype: dict) -> pd.DataFrame:
    try:
        return pd.read_csv(
            io.BytesIO(data),
            header=0,
            names=names,
            index_col=False,
            dtype=dtype,
            engine="c",
            encoding="utf-8",
            keep_default_na=False,
        )
    except pd.errors.ParserError as error:  # a line with too many fields
        match = re.search(r"line (\d+)", str(error))
        fail_at_line(path, int(match.group(1)) - 1 if match else 0, f"cannot be parsed ({str(error).strip()})")
    except (ValueError, OverflowError):  # a value that is not of its column's type: find it with the text columns
        return None


def _fields_per_line(path: Path, data: bytes, n_fields: int) -> None:
    """A DataError naming the first line without exactly n_fields fields (for files without quoted fields)."""
    buf = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(buf == ord("\n"))
    commas = np.bincount(np.searchsorted(newlines, np.flatnonzero(buf == ord(","))), minlength=len(newlines) + 1)
    starts, ends = np.r_[0, newlines + 1], np.r_[newlines, len(buf)]
    bad = np.flatnonzero((commas + 1 != n_fields) | (ends == starts))
    if len(bad):
        row = int(bad[0])
        line = data[starts[row] : ends[row]].decode("utf-8")
        fail_at_line(
            path, row, f"expected {n_fields} comma-separated fields, found {commas[row] + 1}: '{shorten(line)}'"
        )


def _integers(
    path: Path, text: pd.Series, what: str, lo: int, hi: int, expected: str | None = None, lines=None
) -> np.ndarray:
    """The column as int64, or a DataError naming the first bad value and its line (`lines`: each row's 0-based
    line; by default row + 1, the line after the header)."""
    values = pd.to_numeric(text, errors="coerce")
    bad = values.isna().to_numpy() | ~text.str.fullmatch(r"[+-]?\d+").to_numpy()
    values = values.to_numpy(np.float64)
    bad |= (values < lo) | (values > hi)
    if bad.any():
        row = int(np.argmax(bad))
        expected = expected or f"an integer {lo}..{hi}"
        fail_at_line(
            path, row + 1 if lines is None else lines[row], f"{what} '{shorten(text.iloc[row])}' is not {expected}"
        )
    return values.astype(np.int64)


def read_csv_movies(path: Path) -> pd.DataFrame:
    """movies.csv (movieId,title,genres) as movie_id int32, title, genres ("A|B"; "(no genres listed)" kept).

    Read with the csv module, which knows quoting: a title with a comma is quoted, and an unquoted
    one is a line with a field too many (tens of thousands of lines: no need for the C parser).
    """
    text = _content(path, "movies").decode("utf-8")
    reader = csv.reader(io.StringIO(text), strict=True)
    next(reader)
    lines_read = reader.line_num
    rows, lines = [], []  # lines: each record's first line, 0-based (a quoted title may span lines)
    try:
        for row in reader:
            lines.append(lines_read)
            lines_read = reader.line_num
            if len(row) != 3:
                fail_at_line(
                    path,
                    lines[-1],
                    f"expected 3 fields (movieId,title,genres), found {len(row)}: '{shorten(','.join(row))}'"
                    " (a title with a comma must be quoted)",
                )
            rows.append(row)
    except csv.Error as error:
        fail_at_line(path, reader.line_num - 1, f"cannot be parsed ({error})")
    frame = pd.DataFrame(rows, columns=["movie_id", "title", "genres"], dtype=str)
    movie_id = _integers(path, frame["movie_id"], "movie id", 1, np.iinfo(np.int32).max, lines=lines).astype(np.int32)
    repeated = pd.Series(movie_id).duplicated().to_numpy()
    if repeated.any():
        row = int(np.argmax(repeated))
        first = int(np.argmax(movie_id == movie_id[row]))
        fail_at_line(path, lines[row], f"movie id '{movie_id[row]}' is repeated (first on line {lines[first] + 1})")
    empty = (frame["title"].str.strip() == "").to_numpy() | (frame["genres"] == "").to_numpy()
    if empty.any():
        fail_at_line(path, lines[int(np.argmax(empty))], "title or genres is empty")
    return pd.DataFrame(
        {"movie_id": movie_id, "title": frame["title"].to_numpy(), "genres": frame["genres"].to_numpy()}
    ).astype({"title": "str", "genres": "str"})


def read_csv_ratings(path: Path, spec: DatasetSpec, movies: pd.DataFrame, files: dict[str, Path]) -> pd.DataFrame:
    """ratings.csv (userId,movieId,rating,timestamp) in the schema of `data.read_movielens`, ratings float32."""
    data = _content(path, "ratings")
    names = ["user_id", "movie_id", "rating", "timestamp"]
    _fields_per_line(path, data, len(names))
    frame = _read(
        path, data, names, {"user_id": np.int64, "movie_id": np.int64, "rating": np.float64, "timestamp": np.int64}
    )
    if frame is None:  # some value is not a number: read the text to name it
        text = _read(path, data, names, dict.fromkeys(names, str))
        for column, what in (("user_id", "user id"), ("movie_id", "movie id")):
            _integers(path, text[column], what, 1, np.iinfo(np.int32).max)
        _integers(path, text["timestamp"], "timestamp", -(2**62), 2**62, "a number of seconds since 1970-01-01")
        ratings = pd.to_numeric(text["rating"], errors="coerce").to_numpy(np.float64)
        check_ratings(path, ratings, lambda: text["rating"], spec.rating_scale, spec.rating_step, first_line=1)
        fail_at_line(path, 0, "cannot be parsed")  # every column parsed as text: unreachable
    int32_max = np.iinfo(np.int32).max
    for column, what in (("user_id", "user id"), ("movie_id", "movie id")):
        ids = frame[column].to_numpy()
        outside = (ids < 1) | (ids > int32_max)
        if outside.any():
            row = int(np.argmax(outside))
            fail_at_line(path, row + 1, f"{what} '{ids[row]}' is outside 1..{int32_max}")
    rating = check_ratings(
        path,
        frame["rating"].to_numpy(np.float64),
        lambda: _read(path, data, names, dict.fromkeys(names, str))["rating"],
        spec.rating_scale,
        spec.rating_step,
        first_line=1,
    )
    return checked_ratings(
        path,
        frame["user_id"].to_numpy().astype(np.int32),
        frame["movie_id"].to_numpy().astype(np.int32),
        rating,
        frame["timestamp"].to_numpy(np.int64),
        [(frame["movie_id"].to_numpy().astype(np.int32), movies["movie_id"], "movie id", files["movies"])],
        first_line=1,
    )
