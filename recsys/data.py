"""Get MovieLens (download and verify, read a local copy, or generate a synthetic one) and parse it strictly."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, NoReturn

import numpy as np
import pandas as pd
import requests

from recsys.artifacts import atomic_path

log = logging.getLogger(__name__)

KNOWN_DATASETS = ("ml-1m", "ml-100k", "synthetic")


class DataError(ValueError):
    """A data file or folder is missing or malformed; the message names the file, line, value and fix."""


class DownloadError(RuntimeError):
    """Every download source failed; the message lists each source with its error."""


@dataclass(frozen=True)
class DatasetSpec:
    """What GroupLens publishes for one MovieLens release: its zip's MD5, folder and file names."""

    name: str
    md5: str
    folder: str
    files: dict[str, str]  # {"ratings": ..., "users": ..., "movies": ...}


DATASETS: dict[str, DatasetSpec] = {
    "ml-1m": DatasetSpec(
        "ml-1m",
        "c4d9eecfca2ab87c1945afe126590906",
        "ml-1m",
        {"ratings": "ratings.dat", "users": "users.dat", "movies": "movies.dat"},
    ),
    "ml-100k": DatasetSpec(
        "ml-100k",
        "0e33842e24a9c977be4e0107933c0723",
        "ml-100k",
        {"ratings": "u.data", "users": "u.user", "movies": "u.item"},
    ),
}


@dataclass
class MovieLensData:
    """The three MovieLens tables in one schema, whatever the release they came from."""

    users: pd.DataFrame
    movies: pd.DataFrame
    ratings: pd.DataFrame
    source: str  # human-readable: the folder the files were read from
    files: dict[str, Path]


ML1M_AGE_CODES = (1, 18, 25, 35, 45, 50, 56)
ML1M_GENRES = (
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
# The order of ML-100K's 19 genre flag columns (its u.genre file).
ML100K_GENRES = ("unknown",) + ML1M_GENRES

_MARKER = ".verified-md5"  # written inside an extracted folder once it is complete and verified
_FIX_LINE = "Fix or remove that line, or replace the file with the one from the original MovieLens zip."
_INT_RE = r"[+-]?\d+"


# --------------------------------------------------------------------------------------------
# Download, verify, extract


def md5_of(path: str | os.PathLike) -> str:
    """Hex MD5 of a file, the checksum GroupLens publishes for its zips.

    Args:
        path: the file to hash.

    Returns:
        The 32-character lowercase hex digest.
    """
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def safe_extract(zip_path: str | os.PathLike, target_dir: str | os.PathLike) -> None:
    """Extract a zip, refusing it whole if any entry could land outside `target_dir`.

    A downloaded archive is untrusted input: an entry named `../x`, `/etc/x` or `C:\\x`, or a
    symlink entry, could write anywhere. Every entry is checked before anything is written.

    Args:
        zip_path: the archive.
        target_dir: the folder to extract into (created if needed).

    Raises:
        DataError: the archive is unreadable or has an unsafe entry (nothing is written then).
    """
    target = Path(target_dir).resolve()
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for info in archive.infolist():
                name = info.filename
                # PureWindowsPath splits on both / and \ and sees drive letters.
                win = PureWindowsPath(name)
                unsafe = (
                    PurePosixPath(name).is_absolute()
                    or win.is_absolute()
                    or bool(win.drive)
                    or ".." in win.parts
                    or not (target / name).resolve().is_relative_to(target)
                )
                if unsafe or stat.S_ISLNK(info.external_attr >> 16):
                    kind = "a symlink" if not unsafe else f"a path outside {target}"
                    raise DataError(
                        f"{zip_path}: refusing to extract entry {name!r}: it is {kind}. This is not "
                        f"a genuine MovieLens archive; delete it and download again."
                    )
            target.mkdir(parents=True, exist_ok=True)
            archive.extractall(target)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{zip_path}: not a readable zip ({exc}); delete it and download again.") from exc


class _ChecksumMismatch(Exception):
    pass


def _spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown MovieLens release {name!r}: expected one of {', '.join(DATASETS)}") from None


def _is_verified(folder: Path, spec: DatasetSpec) -> bool:
    marker = folder / _MARKER
    return (
        marker.is_file()
        and marker.read_text().strip() == spec.md5
        and all((folder / f).is_file() for f in spec.files.values())
    )


def _download(session: Any, url: str, dest: Path, timeout_s: float) -> None:
    # verify=True spelled out: TLS verification is never to be turned off here, whatever the
    # session's defaults, because the MD5 alone does not tell us who served the bytes.
    response = session.get(url, stream=True, timeout=timeout_s, verify=True)
    try:
        response.raise_for_status()
        with open(dest, "wb") as f:
            for chunk in response.iter_content(chunk_size=1 << 20):
                f.write(chunk)
    finally:
        response.close()


def _download_verified(spec: DatasetSpec, sources: list[str], zip_path: Path, timeout_s: float, session: Any) -> None:
    errors: list[tuple[str, str]] = []
    owned = requests.Session() if session is None else contextlib.nullcontext(session)
    with owned as http:
        for source in sources:
            url = source.replace("{name}", spec.name)
            try:
                # atomic_path deletes the partial or mismatching download on any exception.
                with atomic_path(zip_path) as tmp:
                    _download(http, url, tmp, timeout_s)
                    got = md5_of(tmp)
                    if got != spec.md5:
                        raise _ChecksumMismatch(f"MD5 {got} does not match GroupLens's {spec.md5}; download removed")
            except (requests.RequestException, OSError, _ChecksumMismatch) as exc:
                message = f"{type(exc).__name__}: {exc}"
                log.warning("Download of %s from %s failed: %s", spec.name, url, message)
                errors.append((url, message))
                continue
            log.info("Downloaded %s from %s (MD5 verified)", spec.name, url)
            return
    listing = "\n".join(f"  - {url}: {message}" for url, message in errors) or "  (no sources given)"
    raise DownloadError(
        f"Could not download {spec.name} from any source:\n{listing}\n"
        f"To run without network: pass a folder holding the extracted files, e.g. "
        f"`-p data_dir=path/to/{spec.folder}` (the folder with {spec.files['ratings']}), or put the "
        f"official {spec.name}.zip (MD5 {spec.md5}) at {zip_path}, or use `-p dataset=synthetic`."
    )


def fetch_dataset(name: str, sources: list[str], cache_dir: Path, timeout_s: float = 60, session: Any = None) -> Path:
    """Make sure a verified, extracted copy of a MovieLens release is in `cache_dir`.

    Why: runs must read byte-identical data wherever they run, and a second run must not touch
    the network. Sources are tried in order; a zip counts only if its MD5 is GroupLens's.

    Args:
        name: "ml-1m" or "ml-100k".
        sources: URL templates; "{name}" is replaced by `name`.
        cache_dir: where the zip and the extracted folder are kept.
        timeout_s: network timeout per request (seconds).
        session: a requests.Session-like object (tests inject a fake); None opens a real one.

    Returns:
        The folder holding the extracted files, `cache_dir/<folder>`.

    Raises:
        DownloadError: no source gave a verified zip (the message lists each source's error).
        DataError: the verified zip does not hold the expected files.
    """
    spec = _spec(name)
    cache_dir = Path(cache_dir)
    folder = cache_dir / spec.folder
    if _is_verified(folder, spec):
        return folder
    cache_dir.mkdir(parents=True, exist_ok=True)
    zip_path = cache_dir / f"{spec.name}.zip"
    if not (zip_path.is_file() and md5_of(zip_path) == spec.md5):
        _download_verified(spec, list(sources), zip_path, timeout_s, session)
    # Extract beside the final folder, then rename: a reader never sees a half-extracted folder.
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{spec.folder}.", dir=cache_dir))
    try:
        safe_extract(zip_path, tmp_dir)
        extracted = locate_files(name, tmp_dir)["ratings"].parent
        with atomic_path(extracted / _MARKER) as tmp:
            tmp.write_text(spec.md5 + "\n")
        if folder.exists():
            log.warning("Replacing unverified folder %s with the verified extraction", folder)
            shutil.rmtree(folder)
        os.replace(extracted, folder)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return folder


def locate_files(name: str, data_dir: Path) -> dict[str, Path]:
    """Find a release's three files in `data_dir` or in `data_dir/<folder>`.

    Why: users point data_dir either at the extracted folder itself or at its parent (e.g.
    `data/` holding `ml-1m/`); both should work, and a wrong path should say what is missing.

    Args:
        name: "ml-1m" or "ml-100k" (the synthetic data uses the ml-1m files).
        data_dir: the folder to look in.

    Returns:
        {"ratings": path, "users": path, "movies": path}.

    Raises:
        DataError: the folder or a file is missing (the message says where it looked).
    """
    spec = _spec(name)
    data_dir = Path(data_dir)
    wanted = ", ".join(spec.files.values())
    fix = (
        f"Point data_dir at the folder holding the extracted {name} files ({wanted}), "
        f"e.g. `-p data_dir=path/to/{spec.folder}`, or leave data_dir empty to download."
    )
    if not data_dir.is_dir():
        raise DataError(
            f"data_dir {data_dir} (resolved: {data_dir.resolve()}) does not exist or is not a folder. {fix}"
        )
    candidates = [data_dir, data_dir / spec.folder]
    for folder in candidates:
        paths = {kind: folder / file for kind, file in spec.files.items()}
        if all(p.is_file() for p in paths.values()):
            return paths
    looked = [
        f"{folder.resolve()} (missing: {', '.join(f for f in spec.files.values() if not (folder / f).is_file())})"
        for folder in candidates
        if folder.is_dir()
    ]
    raise DataError(f"{name} files not found; looked in {' and in '.join(looked)}. {fix}")


# --------------------------------------------------------------------------------------------
# Strict parsing


def _fail(path: Path, row: int, message: str, fix: str = _FIX_LINE) -> NoReturn:
    raise DataError(f"{path} line {row + 1}: {message}. {fix}")


def _shown(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


class _Table:
    """One delimited file: checked line by line with vectorised code, then parsed by pandas' C parser."""

    def __init__(self, path: Path, sep: str, columns: tuple[str, ...], str_columns: tuple[str, ...]):
        self.path = path
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
            self.df = self._read(dtype={c: str for c in str_columns})
        except pd.errors.ParserError as exc:  # the field-count check should make this unreachable
            match = re.search(r"line (\d+)", str(exc))
            row = int(match.group(1)) - 1 if match else 0
            _fail(path, row, f"cannot be parsed ({exc})")

    def _read(self, **kwargs: Any) -> pd.DataFrame:
        return pd.read_csv(
            io.BytesIO(self.data),
            sep=self.sep,
            header=None,
            names=list(self.columns),
            index_col=False,
            engine="c",
            encoding="latin-1",
            quoting=csv.QUOTE_NONE,
            na_filter=False,
            skip_blank_lines=False,
            **kwargs,
        )

    def _fail_at_byte(self, data: bytes, offset: int, message: str) -> NoReturn:
        row = data.count(b"\n", 0, offset)
        _fail(self.path, row, message)

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
            line = data[starts[row] : ends[row]].decode("latin-1").replace("\x1f", "::")
            if not line:
                _fail(self.path, row, "blank line inside the file")
            _fail(
                self.path,
                row,
                f"expected {n_fields} fields separated by '{shown_sep}', found {fields[row]}: '{_shown(line)}'",
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
                _fail(self.path, row, f"{what} '{_shown(raw.iloc[row])}' {not_int}")
            # Every value is written as an integer, so only the int64 range can be the problem.
            values = pd.to_numeric(raw, errors="coerce")
            too_large = np.abs(values.to_numpy(dtype=float)) >= 2.0**62
            if too_large.any():
                row = int(np.argmax(too_large))
                _fail(self.path, row, f"{what} '{_shown(raw.iloc[row])}' is too large")
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
                _fail(self.path, row, f"{what} '{array[row]}' is outside {bounds}")
        if allowed is not None:
            unknown = ~np.isin(array, allowed)
            if unknown.any():
                row = int(np.argmax(unknown))
                _fail(self.path, row, f"{what} '{array[row]}' is not one of {', '.join(map(str, allowed))}")
        return array

    def strings(
        self, column: str, what: str, *, allowed: tuple[str, ...] | None = None, non_empty: bool = False
    ) -> pd.Series:
        """The column as str, or a DataError naming the first bad line and value."""
        values = self.df[column].astype(str)
        if allowed is not None:
            bad = ~values.isin(allowed)
            if bad.any():
                row = int(np.argmax(bad.to_numpy()))
                _fail(self.path, row, f"{what} '{_shown(values.iloc[row])}' is not one of {', '.join(allowed)}")
        if non_empty:
            empty = (values.str.strip() == "").to_numpy()
            if empty.any():
                _fail(self.path, int(np.argmax(empty)), f"{what} is empty")
        return values

    def unique_ids(self, ids: np.ndarray, what: str) -> None:
        """A DataError if an id appears twice, naming both lines."""
        duplicated = pd.Series(ids).duplicated().to_numpy()
        if duplicated.any():
            row = int(np.argmax(duplicated))
            first = int(np.argmax(ids == ids[row]))
            _fail(self.path, row, f"{what} '{ids[row]}' is repeated (first on line {first + 1})")


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


def _parse_movies(path: Path, fmt: str) -> pd.DataFrame:
    if fmt == "ml-1m":
        table = _Table(path, "::", ("movie_id", "title", "genres"), ("title", "genres"))
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
    path: Path, fmt: str, users: pd.DataFrame, movies: pd.DataFrame, files: dict[str, Path]
) -> pd.DataFrame:
    columns = ("user_id", "movie_id", "rating", "timestamp")
    table = _Table(path, "::" if fmt == "ml-1m" else "\t", columns, ())
    user_id = _id_column(table, "user_id", "user id")
    movie_id = _id_column(table, "movie_id", "movie id")
    rating = table.ints("rating", "rating", lo=1, hi=5, not_int="is not an integer 1..5")
    timestamp = table.ints("timestamp", "timestamp", not_int="is not a number (seconds since 1970-01-01)")
    for ids, known, what, file in (
        (user_id, users["user_id"], "user id", files["users"]),
        (movie_id, movies["movie_id"], "movie id", files["movies"]),
    ):
        unknown = ~np.isin(ids, known.to_numpy())
        if unknown.any():
            _fail(
                path,
                int(np.argmax(unknown)),
                f"{what} '{ids[np.argmax(unknown)]}' is not in {file.name}",
                f"Use the {file.name} that came with this {path.name} (same MovieLens zip).",
            )
    ratings = pd.DataFrame(
        {"user_id": user_id, "movie_id": movie_id, "rating": rating.astype(np.int8), "timestamp": timestamp}
    )
    # A pair rated twice would leak between train and test splits.
    repeated = ratings.duplicated(["user_id", "movie_id"]).to_numpy()
    if repeated.any():
        row = int(np.argmax(repeated))
        first = int(np.argmax((user_id == user_id[row]) & (movie_id == movie_id[row])))
        _fail(path, row, f"user '{user_id[row]}' rates movie '{movie_id[row]}' again (first on line {first + 1})")
    return ratings


def read_movielens(fmt: str, data_dir: Path) -> MovieLensData:
    """Read and strictly check one MovieLens folder into the project's single schema.

    Why: every later stage trusts these tables, so a malformed line is reported here with its
    file, line number and value rather than surfacing as a wrong metric later.

    Args:
        fmt: "ml-1m" (also the synthetic data) or "ml-100k".
        data_dir: the folder holding the files, or its parent (see `locate_files`).

    Returns:
        MovieLensData with users (user_id int32, gender, age int16, occupation, zip_code),
        movies (movie_id int32, title, genres "A|B") and ratings (user_id int32,
        movie_id int32, rating int8, timestamp int64).

    Raises:
        DataError: a file is missing or malformed.
    """
    if fmt not in DATASETS:
        raise DataError(f"unknown file format {fmt!r}: expected one of {', '.join(DATASETS)}")
    files = locate_files(fmt, data_dir)
    users = _parse_users(files["users"], fmt)
    movies = _parse_movies(files["movies"], fmt)
    ratings = _parse_ratings(files["ratings"], fmt, users, movies, files)
    return MovieLensData(
        users=users, movies=movies, ratings=ratings, source=str(files["ratings"].parent.resolve()), files=files
    )


# --------------------------------------------------------------------------------------------
# Synthetic data

_SYNTHETIC_VERSION = 2  # bump when the generator changes, so cached copies are regenerated
# Real US ZIP codes across states (the geo features look them up), a few ZIP+4 and a few
# Canadian codes as ML-1M has, so that ZIP cleaning is exercised.
_US_ZIPS = (
    "10001",
    "90210",
    "60614",
    "98107",
    "02139",
    "73301",
    "33101",
    "94110",
    "30301",
    "80202",
    "19104",
    "48067",
    "55455",
    "97205",
    "85004",
    "20001",
    "02215",
    "78701",
    "63108",
    "37203",
    "53703",
    "84101",
    "70112",
    "96815",
    "99501",
    "27514",
    "43210",
    "15213",
    "92093",
    "06511",
    "89109",
    "46202",
)
_CANADIAN_ZIPS = ("T8N5H", "V6T1Z", "M5S2E", "H3A1B")
_LATIN1_SUBTITLES = ("Café Müller", "Les Misérables", "Señor Niño", "Smörgåsbord", "Déjà Vu")
_AGE_SHARES = (0.04, 0.18, 0.35, 0.20, 0.09, 0.08, 0.06)
_TS_START, _TS_END = 946684800, 1072915199  # 2000-01-01 .. 2003-12-31 (UTC)
_TARGET_MEAN = 3.6
_WATCH_TASTE = 1.5  # how strongly taste (vs popularity alone) decides which movies a user rates


def _write_ml1m_file(path: Path, frame: pd.DataFrame) -> None:
    text = frame.to_csv(sep="\x1f", header=False, index=False, quoting=csv.QUOTE_NONE, lineterminator="\n")
    with atomic_path(path) as tmp:
        tmp.write_bytes(text.replace("\x1f", "::").encode("latin-1"))


def generate_synthetic(
    out_dir: Path, n_users: int, n_movies: int, ratings_per_user: int, n_factors: int, noise: float, seed: int
) -> Path:
    """Write users.dat, movies.dat and ratings.dat in ML-1M's exact format, with learnable ratings.

    Why: tests and offline demos need data with MovieLens's shape and a structure a model can
    learn (latent tastes, biases, popularity skew), without network or licence concerns.
    Ratings = global offset + user bias + movie bias + scaled factor dot product + N(0, noise),
    rounded and clipped to 1..5 (mean near 3.6). Which movies a user rates follows a Zipf-like
    popularity and their taste (see _WATCH_TASTE). Movie factors lean on their genres and user
    factors on gender and age, so side features carry signal too.

    Args:
        out_dir: folder to write the three files into (created if needed).
        n_users: number of users.
        n_movies: number of movies (at least 20).
        ratings_per_user: mean ratings per user; each user rates at least 20 distinct movies.
        n_factors: latent taste dimensions.
        noise: standard deviation of the rating noise before rounding.
        seed: seed of numpy's default_rng; the same arguments give byte-identical files.

    Returns:
        `out_dir`.
    """
    if n_users < 1 or n_movies < 20 or ratings_per_user < 20 or n_factors < 1 or noise < 0:
        raise DataError(
            f"synthetic parameters out of range (n_users={n_users} >= 1, n_movies={n_movies} >= 20, "
            f"ratings_per_user={ratings_per_user} >= 20, n_factors={n_factors} >= 1, "
            f"noise={noise} >= 0); fix them in the params `synthetic` group."
        )
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)

    # Users
    gender = rng.choice(np.array(["M", "F"]), size=n_users, p=[0.72, 0.28])
    age_index = rng.choice(len(ML1M_AGE_CODES), size=n_users, p=np.array(_AGE_SHARES) / sum(_AGE_SHARES))
    zip_kind = rng.random(n_users)
    zip_code = rng.choice(np.array(_US_ZIPS, dtype=object), size=n_users)
    plus4 = zip_kind < 0.04
    zip_code[plus4] = [f"{z}-{n:04d}" for z, n in zip(zip_code[plus4], rng.integers(1, 10000, plus4.sum()))]
    canadian = (zip_kind >= 0.04) & (zip_kind < 0.06)
    zip_code[canadian] = rng.choice(np.array(_CANADIAN_ZIPS, dtype=object), size=canadian.sum())
    users = pd.DataFrame(
        {
            "user_id": np.arange(1, n_users + 1),
            "gender": gender,
            "age": np.array(ML1M_AGE_CODES)[age_index],
            "occupation": rng.integers(0, 21, n_users),
            "zip_code": zip_code,
        }
    )

    # Movies
    year = np.clip(np.round(2000 - rng.gamma(2.0, 9.0, n_movies)), 1919, 2000).astype(int)
    subtitle = np.where(rng.random(n_movies) < 0.05, [": " + s for s in rng.choice(_LATIN1_SUBTITLES, n_movies)], "")
    title = [f"Synthetic Movie {i}{sub} ({y})" for i, sub, y in zip(range(1, n_movies + 1), subtitle, year)]
    n_genres = 1 + rng.binomial(2, 0.35, n_movies)
    genre_sets = [np.sort(rng.choice(len(ML1M_GENRES), size=k, replace=False)) for k in n_genres]
    movies = pd.DataFrame(
        {
            "movie_id": np.arange(1, n_movies + 1),
            "title": title,
            "genres": ["|".join(ML1M_GENRES[g] for g in gs) for gs in genre_sets],
        }
    )

    # Latent structure: genres shape movie tastes, gender and age shape user tastes.
    genre_vectors = rng.normal(size=(len(ML1M_GENRES), n_factors))
    movie_factors = np.stack([genre_vectors[gs].mean(axis=0) for gs in genre_sets]) * 0.8 + rng.normal(
        scale=0.6, size=(n_movies, n_factors)
    )
    gender_vectors = rng.normal(scale=0.5, size=(2, n_factors))
    age_vectors = rng.normal(scale=0.5, size=(len(ML1M_AGE_CODES), n_factors))
    user_factors = (
        rng.normal(size=(n_users, n_factors)) + gender_vectors[(gender == "F").astype(int)] + age_vectors[age_index]
    )
    user_bias = rng.normal(scale=0.35, size=n_users)
    # Zipf-like popularity over a random order of movies; popular movies also rate a bit higher.
    popularity_rank = rng.permutation(n_movies)
    popularity = 1.0 / (popularity_rank + 10.0) ** 1.0
    popularity /= popularity.sum()
    log_pop = np.log(popularity)
    movie_bias = rng.normal(scale=0.4, size=n_movies) + 0.25 * (log_pop - log_pop.mean()) / log_pop.std()

    # Which movies each user rates: at least 20, mean ratings_per_user, no repeated pair.
    extra = ratings_per_user - 20
    counts = np.minimum(20 + np.round(rng.exponential(extra, n_users) if extra > 0 else 0), n_movies).astype(int)
    # Users watch what is popular AND what suits their taste (so retrieval has something to learn
    # beyond popularity): weights popularity * exp(taste), sampled without replacement per user with
    # the Gumbel-top-k trick (sort log-weights plus Gumbel noise, keep each user's first `count`).
    taste = user_factors @ movie_factors.T / np.sqrt(n_factors)
    keys = log_pop[None, :] + _WATCH_TASTE * taste + rng.gumbel(size=(n_users, n_movies))
    chosen = np.argsort(-keys, axis=1, kind="stable")
    user_index = np.repeat(np.arange(n_users), counts)
    movie_index = np.concatenate([chosen[u, :c] for u, c in enumerate(counts)])

    interaction = taste[user_index, movie_index] * np.sqrt(n_factors)
    score = (
        user_bias[user_index]
        + movie_bias[movie_index]
        + 0.8 * interaction / np.sqrt(n_factors)
        + rng.normal(scale=noise, size=len(user_index))
    )
    # Clipping to 1..5 pulls the mean down; shift until the rounded mean sits at the target.
    offset = _TARGET_MEAN
    for _ in range(4):
        offset += _TARGET_MEAN - np.clip(np.round(score + offset), 1, 5).mean()
    rating = np.clip(np.round(score + offset), 1, 5).astype(int)

    start = rng.integers(_TS_START, _TS_END - 180 * 86400, n_users)
    timestamp = np.minimum(start[user_index] + rng.exponential(60 * 86400, len(user_index)).astype(np.int64), _TS_END)
    ratings = pd.DataFrame(
        {"user_id": user_index + 1, "movie_id": movie_index + 1, "rating": rating, "timestamp": timestamp}
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    _write_ml1m_file(out_dir / "users.dat", users)
    _write_ml1m_file(out_dir / "movies.dat", movies)
    _write_ml1m_file(out_dir / "ratings.dat", ratings)  # last: its presence means the set is complete
    return out_dir


# --------------------------------------------------------------------------------------------
# The entry point


def load_dataset(
    dataset: str, data_dir: str | None, download: dict, synthetic: dict, seed: int, project_root: Path
) -> MovieLensData:
    """Load the dataset a run asks for: the one place notebooks get their data from.

    Why: the three ways to get data (a local folder, a verified download, a generated set)
    must give the same schema and the same strict checks, so the notebooks never branch.

    Args:
        dataset: "ml-1m", "ml-100k" or "synthetic".
        data_dir: folder with the extracted files (relative to the current dir); if set, it is
            read and nothing is downloaded. None or "" downloads (or generates) into the cache.
        download: the params `download` group (sources, cache_dir, timeout_s).
        synthetic: the params `synthetic` group (generate_synthetic's size arguments).
        seed: the run seed; it also seeds the synthetic generator.
        project_root: the folder `download["cache_dir"]` is relative to.

    Returns:
        The parsed MovieLensData.

    Raises:
        DataError: unknown dataset, or missing/malformed files.
        DownloadError: no download source worked.
    """
    if dataset not in KNOWN_DATASETS:
        raise DataError(
            f"unknown dataset {dataset!r}: choose one of {', '.join(KNOWN_DATASETS)} (e.g. `-p dataset=ml-1m`)."
        )
    fmt = "ml-1m" if dataset == "synthetic" else dataset  # the synthetic files are ML-1M format
    if data_dir:
        return read_movielens(fmt, Path(data_dir).expanduser())
    cache_dir = Path(project_root) / download["cache_dir"]
    if dataset == "synthetic":
        key = json.dumps({"params": synthetic, "seed": seed, "generator": _SYNTHETIC_VERSION}, sort_keys=True)
        folder = cache_dir / f"synthetic-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
        if not all((folder / f).is_file() for f in DATASETS["ml-1m"].files.values()):
            generate_synthetic(folder, seed=seed, **synthetic)
        return read_movielens(fmt, folder)
    folder = fetch_dataset(dataset, download["sources"], cache_dir, download["timeout_s"])
    return read_movielens(dataset, folder)
