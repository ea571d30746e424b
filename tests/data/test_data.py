"""Tests of recsys.data.loader: strict parsing, verified downloads (no network), safe extraction, synthetic data."""

from __future__ import annotations

import io
import logging
import os
import re
import stat
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from recsys.data import download, loader, movielens, synthetic
from recsys.data.download import DownloadError
from recsys.data.movielens import DataError, DatasetSpec

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("RECSYS_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

ML1M_USERS = ["1::F::1::10::48067", "2::M::56::16::70072", "3::M::25::15::T8N5H"]
ML1M_MOVIES = [
    "1::Toy Story (1995)::Animation|Children's|Comedy",
    "73::Misérables, Les (1995)::Drama|Musical",
    "3::Grumpier Old Men (1995)::Comedy|Romance",
]
# User 3 has no ratings: that is normal in MovieLens and must parse.
ML1M_RATINGS = ["1::1::5::978300760", "1::73::3::978302109", "2::1::4::978301968", "2::3::1::978300275"]


def _flags(*on: int) -> str:
    return "|".join("1" if i in on else "0" for i in range(19))


ML100K_USERS = ["1|24|M|technician|85711", "2|53|F|other|94043"]
ML100K_MOVIES = [
    f"1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy|{_flags(3, 4, 5)}",
    f"2|Café au Lait (1994)|01-Jan-1994||http://us.imdb.com/M/title-exact?Cafe|{_flags()}",
    f"3|Unknown Film (1996)|||http://us.imdb.com/M/title-exact?U|{_flags(0)}",
]
ML100K_RATINGS = ["1\t1\t5\t874965758", "1\t2\t3\t876893171", "2\t1\t4\t878542960"]


def _write_lines(path: Path, lines: list[str], ending: str = "\n") -> None:
    path.write_bytes((ending.join(lines) + ending).encode("latin-1"))


def write_ml1m(folder: Path, users=None, movies=None, ratings=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    _write_lines(folder / "users.dat", ML1M_USERS if users is None else users)
    _write_lines(folder / "movies.dat", ML1M_MOVIES if movies is None else movies)
    _write_lines(folder / "ratings.dat", ML1M_RATINGS if ratings is None else ratings)
    return folder


def write_ml100k(folder: Path, users=None, movies=None, ratings=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    _write_lines(folder / "u.user", ML100K_USERS if users is None else users)
    _write_lines(folder / "u.item", ML100K_MOVIES if movies is None else movies)
    _write_lines(folder / "u.data", ML100K_RATINGS if ratings is None else ratings)
    return folder


def assert_schema(ml: loader.MovieLensData) -> None:
    assert list(ml.users.columns) == ["user_id", "gender", "age", "occupation", "zip_code"]
    assert list(ml.movies.columns) == ["movie_id", "title", "genres"]
    assert list(ml.ratings.columns) == ["user_id", "movie_id", "rating", "timestamp"]
    assert ml.users["user_id"].dtype == np.int32
    assert ml.users["age"].dtype == np.int16
    assert ml.movies["movie_id"].dtype == np.int32
    assert ml.ratings["user_id"].dtype == np.int32
    assert ml.ratings["movie_id"].dtype == np.int32
    assert ml.ratings["rating"].dtype == np.int8
    assert ml.ratings["timestamp"].dtype == np.int64
    for frame, column in [
        (ml.users, "gender"),
        (ml.users, "occupation"),
        (ml.users, "zip_code"),
        (ml.movies, "title"),
        (ml.movies, "genres"),
    ]:
        assert pd.api.types.is_string_dtype(frame[column].dtype), column


# ------------------------------------------------------------------------------------------
# Parsing


def test_ml1m_parses_to_schema(tmp_path):
    ml = loader.read_movielens("ml-1m", write_ml1m(tmp_path / "ml"))
    assert_schema(ml)
    assert ml.users.to_dict("list") == {
        "user_id": [1, 2, 3],
        "gender": ["F", "M", "M"],
        "age": [1, 56, 25],
        "occupation": ["10", "16", "15"],
        "zip_code": ["48067", "70072", "T8N5H"],
    }
    assert ml.movies["genres"].tolist()[0] == "Animation|Children's|Comedy"
    assert ml.ratings.to_dict("list")["rating"] == [5, 3, 4, 1]
    assert ml.source == str((tmp_path / "ml").resolve())
    assert ml.files["ratings"] == tmp_path / "ml" / "ratings.dat"


def test_ml1m_latin1_title_decodes(tmp_path):
    ml = loader.read_movielens("ml-1m", write_ml1m(tmp_path))
    assert ml.movies.set_index("movie_id").loc[73, "title"] == "Misérables, Les (1995)"


def test_ml100k_parses_to_schema_with_genre_names(tmp_path):
    ml = loader.read_movielens("ml-100k", write_ml100k(tmp_path))
    assert_schema(ml)
    assert ml.users.to_dict("list") == {
        "user_id": [1, 2],
        "gender": ["M", "F"],
        "age": [24, 53],
        "occupation": ["technician", "other"],
        "zip_code": ["85711", "94043"],
    }
    assert ml.movies["genres"].tolist() == ["Animation|Children's|Comedy", "", "unknown"]
    assert ml.movies["title"].tolist()[1] == "Café au Lait (1994)"


def test_trailing_blank_lines_and_crlf_are_fine(tmp_path):
    folder = write_ml1m(tmp_path)
    _write_lines(folder / "ratings.dat", ML1M_RATINGS + ["", ""], ending="\r\n")
    assert len(loader.read_movielens("ml-1m", folder).ratings) == len(ML1M_RATINGS)


def _replace(lines: list[str], index: int, line: str) -> list[str]:
    lines = list(lines)
    if index == len(lines):
        lines.append(line)
    else:
        lines[index] = line
    return lines


BAD_ML1M = [
    # (file, 0-based line index, new line, expected message fragment)
    ("ratings", 2, "2::1::4", "ratings.dat line 3: expected 4 fields separated by '::', found 3: '2::1::4'"),
    ("ratings", 2, "2::1::4::978301968::9", "ratings.dat line 3: expected 4 fields separated by '::', found 5"),
    ("ratings", 0, "1::1::5::978300760::extra", "ratings.dat line 1: expected 4 fields"),
    ("ratings", 1, "", "ratings.dat line 2: blank line inside the file"),
    ("ratings", 1, "x1::73::3::978302109", "ratings.dat line 2: user id 'x1' is not an integer"),
    ("ratings", 3, "2::3.5::1::978300275", "ratings.dat line 4: movie id '3.5' is not an integer"),
    ("ratings", 3, "2::3::1::soon", "ratings.dat line 4: timestamp 'soon' is not a number"),
    ("ratings", 3, "2::3::7::978300275", "ratings.dat line 4: rating '7' is outside 1..5"),
    ("ratings", 2, "2::1::0::978300275", "ratings.dat line 3: rating '0' is outside 1..5"),
    ("ratings", 2, "2::1::4.5::978300275", "ratings.dat line 3: rating '4.5' is not an integer"),
    ("ratings", 4, "99::1::4::978300275", "ratings.dat line 5: user id '99' is not in users.dat"),
    ("ratings", 4, "3::2::4::978300275", "ratings.dat line 5: movie id '2' is not in movies.dat"),
    ("ratings", 4, "1::73::2::978300275", "ratings.dat line 5: user '1' rates movie '73' again (first on line 2)"),
    (
        "ratings",
        3,
        "2::99999999999::1::978300275",
        "ratings.dat line 4: movie id '99999999999' is outside 1..2147483647",
    ),
    ("users", 1, "2::X::56::16::70072", "users.dat line 2: gender 'X' is not one of M, F"),
    ("users", 2, "1::M::25::15::55117", "users.dat line 3: user id '1' is repeated (first on line 1)"),
    ("users", 1, "2::M::57::16::70072", "users.dat line 2: age code '57' is not one of 1, 18"),
    ("users", 1, "2::M::56::16", "users.dat line 2: expected 5 fields"),
    (
        "movies",
        2,
        "1::Another Toy Story (1995)::Comedy",
        "movies.dat line 3: movie id '1' is repeated (first on line 1)",
    ),
    ("movies", 1, "seventy::Misérables, Les (1995)::Drama", "movies.dat line 2: movie id 'seventy' is not an integer"),
    ("movies", 3, "4::Title::With::Colons::Drama", "movies.dat line 4: expected 3 fields separated by '::', found 5"),
]


@pytest.mark.parametrize("kind, index, line, expected", BAD_ML1M, ids=[e[3].split(": ", 1)[1][:40] for e in BAD_ML1M])
def test_ml1m_bad_input_names_file_line_and_value(tmp_path, kind, index, line, expected):
    lines = {"users": ML1M_USERS, "movies": ML1M_MOVIES, "ratings": ML1M_RATINGS}
    folder = write_ml1m(tmp_path, **{kind: _replace(lines[kind], index, line)})
    with pytest.raises(DataError, match=re.escape(expected)) as error:
        loader.read_movielens("ml-1m", folder)
    assert str(folder) in str(error.value)  # the full path, so the file can be found
    assert "Fix" in str(error.value) or "Use the" in str(error.value)  # and how to fix it


BAD_ML100K = [
    ("ratings", 1, "1\t2\t3", "u.data line 2: expected 4 fields separated by '\\t', found 3"),
    ("ratings", 1, "1\t2\t6\t876893171", "u.data line 2: rating '6' is outside 1..5"),
    ("users", 0, "1|24|Q|technician|85711", "u.user line 1: gender 'Q' is not one of M, F"),
    ("movies", 1, f"2|Café (1994)|01-Jan-1994||url|{_flags()}|0", "u.item line 2: expected 24 fields"),
    (
        "movies",
        2,
        f"3|Unknown (1996)|||url|{_flags(0).replace('1', '2')}",
        "u.item line 3: genre flag 'unknown' '2' is outside 0..1",
    ),
]


@pytest.mark.parametrize(
    "kind, index, line, expected", BAD_ML100K, ids=[e[3].split(": ", 1)[1][:40] for e in BAD_ML100K]
)
def test_ml100k_bad_input_names_file_line_and_value(tmp_path, kind, index, line, expected):
    lines = {"users": ML100K_USERS, "movies": ML100K_MOVIES, "ratings": ML100K_RATINGS}
    folder = write_ml100k(tmp_path, **{kind: _replace(lines[kind], index, line)})
    with pytest.raises(DataError, match=re.escape(expected)):
        loader.read_movielens("ml-100k", folder)


def test_empty_ratings_file_is_an_error(tmp_path):
    folder = write_ml1m(tmp_path)
    (folder / "ratings.dat").write_bytes(b"")
    with pytest.raises(DataError, match=r"ratings\.dat is empty"):
        loader.read_movielens("ml-1m", folder)


# ------------------------------------------------------------------------------------------
# Locating files and choosing the dataset


def test_missing_data_dir_says_where_and_how_to_fix(tmp_path):
    with pytest.raises(DataError) as error:
        loader.read_movielens("ml-1m", tmp_path / "nowhere")
    message = str(error.value)
    assert "nowhere" in message and "does not exist" in message
    assert "data_dir" in message and "ratings.dat" in message


def test_missing_file_is_named_with_the_folders_searched(tmp_path):
    folder = write_ml1m(tmp_path / "ml")
    (folder / "movies.dat").unlink()
    with pytest.raises(DataError) as error:
        loader.read_movielens("ml-1m", folder)
    message = str(error.value)
    assert "movies.dat" in message and str(folder.resolve()) in message
    assert "users.dat" not in message.split("missing:")[1].split(")")[0]
    assert "-p data_dir=" in message


def test_data_dir_may_be_the_parent_of_the_release_folder(tmp_path):
    write_ml1m(tmp_path / "ml-1m")
    assert download.locate_files("ml-1m", tmp_path)["ratings"] == tmp_path / "ml-1m" / "ratings.dat"


def test_unknown_dataset_lists_the_known_ones(tmp_path):
    with pytest.raises(DataError) as error:
        loader.load_dataset("ml-30m", None, {}, {}, 0, tmp_path)
    for name in movielens.KNOWN_DATASETS:
        assert name in str(error.value)


def test_load_dataset_with_data_dir_reads_it_and_never_downloads(tmp_path, monkeypatch):
    write_ml1m(tmp_path / "local")
    monkeypatch.setattr(loader, "fetch_dataset", _must_not_be_called)
    monkeypatch.chdir(tmp_path)  # a relative data_dir is relative to the current dir
    ml = loader.load_dataset(
        "ml-1m", "local", {"sources": [], "cache_dir": "data", "timeout_s": 1}, {}, 0, tmp_path / "project"
    )
    assert len(ml.ratings) == len(ML1M_RATINGS)


def test_load_dataset_without_data_dir_fetches_into_the_project_cache(tmp_path, monkeypatch):
    folder = write_ml100k(tmp_path / "cached")
    calls = []

    def fake_fetch(name, sources, cache_dir, timeout_s):
        calls.append((name, sources, cache_dir, timeout_s))
        return folder

    monkeypatch.setattr(loader, "fetch_dataset", fake_fetch)
    download = {"sources": ["https://example.org/{name}.zip"], "cache_dir": "data", "timeout_s": 5}
    ml = loader.load_dataset("ml-100k", None, download, {}, 0, tmp_path / "project")
    assert calls == [("ml-100k", download["sources"], tmp_path / "project" / "data", 5)]
    assert len(ml.users) == 2


def _must_not_be_called(*args, **kwargs):
    raise AssertionError("must not be called")


# ------------------------------------------------------------------------------------------
# Downloads (fake session: no network)


class FakeResponse:
    def __init__(self, body: bytes, status: int = 200):
        self.body, self.status = body, status

    def raise_for_status(self) -> None:
        if self.status >= 400:
            raise requests.HTTPError(f"{self.status} Client Error")

    def iter_content(self, chunk_size: int):
        for start in range(0, len(self.body), chunk_size):
            yield self.body[start : start + chunk_size]

    def close(self) -> None:
        pass


class FakeSession:
    """Answers each URL with bytes, an HTTP status code or an exception; records every call."""

    def __init__(self, answers: dict):
        self.answers, self.calls = answers, []

    def get(self, url, **kwargs):
        self.calls.append((url, kwargs))
        answer = self.answers[url]
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, int):
            return FakeResponse(b"", answer)
        return FakeResponse(answer)


def _zip_bytes(entries: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in entries.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(2003, 2, 1, 0, 0, 0)), text.encode("latin-1"))
    return buffer.getvalue()


@pytest.fixture
def tiny_ml1m_zip(monkeypatch) -> bytes:
    """A real zip laid out like GroupLens's ml-1m.zip, with the pinned MD5 patched to match it."""
    body = _zip_bytes(
        {
            f"ml-1m/{name}": "\n".join(lines) + "\n"
            for name, lines in [
                ("users.dat", ML1M_USERS),
                ("movies.dat", ML1M_MOVIES),
                ("ratings.dat", ML1M_RATINGS),
                ("README", "tiny"),
            ]
        }
    )
    import hashlib

    spec = movielens.DATASETS["ml-1m"]
    monkeypatch.setitem(
        movielens.DATASETS, "ml-1m", DatasetSpec("ml-1m", hashlib.md5(body).hexdigest(), spec.folder, spec.files)
    )
    return body


SOURCES = ["https://primary.example/{name}.zip", "https://mirror.example/data/{name}.zip"]
PRIMARY, MIRROR = (s.replace("{name}", "ml-1m") for s in SOURCES)


def test_checksum_mismatch_removes_download_and_tries_next_source(tmp_path, tiny_ml1m_zip, caplog):
    session = FakeSession({PRIMARY: b"not the GroupLens zip", MIRROR: tiny_ml1m_zip})
    cache = tmp_path / "cache"
    with caplog.at_level(logging.WARNING, logger="recsys.data.loader"):
        folder = download.fetch_dataset("ml-1m", SOURCES, cache, timeout_s=7, session=session)
    assert [url for url, _ in session.calls] == [PRIMARY, MIRROR]
    assert PRIMARY in caplog.text and "MD5" in caplog.text
    assert folder == cache / "ml-1m"
    assert (cache / "ml-1m.zip").read_bytes() == tiny_ml1m_zip
    assert sorted(p.name for p in cache.iterdir()) == ["ml-1m", "ml-1m.zip"]  # no temp left over
    assert len(loader.read_movielens("ml-1m", folder).ratings) == len(ML1M_RATINGS)
    for _, kwargs in session.calls:
        assert kwargs["verify"] is True and kwargs["stream"] is True and kwargs["timeout"] == 7


def test_checksum_mismatch_everywhere_leaves_nothing_behind(tmp_path, tiny_ml1m_zip):
    session = FakeSession({PRIMARY: b"wrong", MIRROR: tiny_ml1m_zip[:-1]})
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="MD5"):
        download.fetch_dataset("ml-1m", SOURCES, cache, session=session)
    assert list(cache.iterdir()) == []


def test_all_sources_failing_lists_each_and_how_to_work_offline(tmp_path, caplog):
    session = FakeSession({PRIMARY: requests.ConnectionError("Name or service not known"), MIRROR: 404})
    with pytest.raises(DownloadError) as error:
        download.fetch_dataset("ml-1m", SOURCES, tmp_path, session=session)
    message = str(error.value)
    assert PRIMARY in message and "ConnectionError" in message and "Name or service" in message
    assert MIRROR in message and "404" in message
    assert "data_dir" in message and "dataset=synthetic" in message
    assert PRIMARY in caplog.text and MIRROR in caplog.text  # each failure was logged as it happened


def test_second_call_uses_the_cache_without_any_request(tmp_path, tiny_ml1m_zip):
    download.fetch_dataset("ml-1m", SOURCES, tmp_path, session=FakeSession({PRIMARY: tiny_ml1m_zip}))
    offline = FakeSession({})
    folder = download.fetch_dataset("ml-1m", SOURCES, tmp_path, session=offline)
    assert offline.calls == []
    assert (folder / "ratings.dat").is_file()


def test_verified_zip_already_in_cache_is_extracted_without_network(tmp_path, tiny_ml1m_zip):
    (tmp_path / "ml-1m.zip").write_bytes(tiny_ml1m_zip)
    offline = FakeSession({})
    folder = download.fetch_dataset("ml-1m", SOURCES, tmp_path, session=offline)
    assert offline.calls == [] and (folder / "users.dat").is_file()


def test_unverified_folder_is_not_trusted_as_cache(tmp_path, tiny_ml1m_zip):
    write_ml1m(tmp_path / "ml-1m", ratings=["1::1::5::1"])  # e.g. a half-finished manual copy
    session = FakeSession({PRIMARY: tiny_ml1m_zip})
    folder = download.fetch_dataset("ml-1m", SOURCES, tmp_path, session=session)
    assert len(session.calls) == 1
    assert len(loader.read_movielens("ml-1m", folder).ratings) == len(ML1M_RATINGS)


# ------------------------------------------------------------------------------------------
# Safe extraction


@pytest.mark.parametrize("evil", ["../evil.txt", "ml-1m/../../evil.txt", "..\\evil.txt", "ABSOLUTE"])
def test_safe_extract_refuses_entries_escaping_the_target(tmp_path, evil):
    if evil == "ABSOLUTE":
        evil = str(tmp_path / "evil.txt")
    zip_path = tmp_path / "evil.zip"
    zip_path.write_bytes(_zip_bytes({"ml-1m/ok.txt": "fine", evil: "pwned"}))
    target = tmp_path / "deep" / "target"
    with pytest.raises(DataError, match="refusing to extract"):
        download.safe_extract(zip_path, target)
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "deep" / "evil.txt").exists()
    assert not target.exists()  # checked before anything was written


def test_safe_extract_refuses_symlink_entries(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        link = zipfile.ZipInfo("ml-1m/ratings.dat")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    zip_path = tmp_path / "link.zip"
    zip_path.write_bytes(buffer.getvalue())
    with pytest.raises(DataError, match="symlink"):
        download.safe_extract(zip_path, tmp_path / "target")
    assert not (tmp_path / "target").exists()


def test_safe_extract_extracts_a_normal_zip(tmp_path):
    zip_path = tmp_path / "ok.zip"
    zip_path.write_bytes(_zip_bytes({"ml-1m/a.txt": "a", "ml-1m/sub/b.txt": "b"}))
    download.safe_extract(zip_path, tmp_path / "out")
    assert (tmp_path / "out" / "ml-1m" / "sub" / "b.txt").read_text() == "b"


def test_md5_of_matches_hashlib(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    assert download.md5_of(tmp_path / "f") == "900150983cd24fb0d6963f7d28e17f72"


# ------------------------------------------------------------------------------------------
# Synthetic data

SYNTHETIC = {"n_users": 600, "n_movies": 400, "ratings_per_user": 60, "n_factors": 4, "noise": 0.6}


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> Path:
    return synthetic.generate_synthetic(tmp_path_factory.mktemp("synthetic"), seed=42, **SYNTHETIC)


def _file_bytes(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in ("users.dat", "movies.dat", "ratings.dat")}


def test_synthetic_is_fast_and_deterministic_for_a_seed(tmp_path, synthetic_dir):
    started = time.perf_counter()
    again = synthetic.generate_synthetic(tmp_path / "again", seed=42, **SYNTHETIC)
    assert time.perf_counter() - started < 2.0  # ~0.1 s; generous for a shared machine
    assert _file_bytes(again) == _file_bytes(synthetic_dir)
    other = synthetic.generate_synthetic(tmp_path / "other", seed=43, **SYNTHETIC)
    assert _file_bytes(other)["ratings.dat"] != _file_bytes(synthetic_dir)["ratings.dat"]


def test_synthetic_parses_back_with_movielens_shape(synthetic_dir):
    ml = loader.read_movielens("ml-1m", synthetic_dir)
    assert_schema(ml)
    per_user = ml.ratings.groupby("user_id").size()
    assert len(ml.users) == 600 and len(ml.movies) == 400
    assert per_user.min() >= 20 and per_user.index.nunique() == 600
    assert per_user.mean() == pytest.approx(60, rel=0.15)
    assert not ml.ratings.duplicated(["user_id", "movie_id"]).any()
    assert ml.ratings["rating"].mean() == pytest.approx(3.6, abs=0.05)
    assert set(ml.ratings["rating"].unique()) == {1, 2, 3, 4, 5}
    years = pd.to_datetime(ml.ratings["timestamp"], unit="s").dt.year
    assert years.min() >= 2000 and years.max() <= 2003
    assert set(ml.users["age"].unique()) <= set(movielens.ML1M_AGE_CODES)
    assert ml.users["occupation"].astype(int).between(0, 20).all()
    zips = ml.users["zip_code"]
    assert zips.str.fullmatch(r"\d{5}-\d{4}").any()  # ZIP+4
    assert zips.str.fullmatch(r"[A-Z]\d[A-Z]\d[A-Z]").any()  # Canadian
    assert zips.str.fullmatch(r"\d{5}").mean() > 0.9
    assert ml.movies["title"].str.fullmatch(r"Synthetic Movie \d+.* \(\d{4}\)").all()
    assert ml.movies["title"].str.contains("[éüñöåà]").any()  # Latin-1 round trip
    genres = set("|".join(ml.movies["genres"]).split("|"))
    assert genres <= set(movielens.GENRES)
    # Zipf-like popularity: the most rated movie has many times the median's ratings.
    per_movie = ml.ratings.groupby("movie_id").size()
    assert per_movie.max() > 4 * per_movie.median()


def test_synthetic_ratings_are_learnable(synthetic_dir):
    ratings = loader.read_movielens("ml-1m", synthetic_dir).ratings
    held_out = np.random.default_rng(0).random(len(ratings)) < 0.1
    train, test = ratings[~held_out], ratings[held_out]
    mean = train["rating"].mean()
    user_offset = train.groupby("user_id")["rating"].mean() - mean
    movie_offset = train.groupby("movie_id")["rating"].mean() - mean
    predicted = (
        mean
        + test["user_id"].map(user_offset).fillna(0).to_numpy()
        + test["movie_id"].map(movie_offset).fillna(0).to_numpy()
    )

    def rmse(prediction):
        return float(np.sqrt(np.mean((test["rating"].to_numpy() - prediction) ** 2)))

    assert rmse(np.clip(predicted, 1, 5)) < 0.9 * rmse(np.full(len(test), mean))


def test_load_dataset_synthetic_generates_once_into_the_cache(tmp_path, monkeypatch):
    download = {"sources": [], "cache_dir": "data", "timeout_s": 1}
    small = dict(SYNTHETIC, n_users=50, n_movies=60, ratings_per_user=25)
    first = loader.load_dataset("synthetic", None, download, small, 7, tmp_path)
    folders = list((tmp_path / "data").glob("synthetic-*"))
    assert len(folders) == 1 and first.source == str(folders[0].resolve())
    monkeypatch.setattr(loader, "generate_synthetic", _must_not_be_called)
    again = loader.load_dataset("synthetic", None, download, small, 7, tmp_path)
    pd.testing.assert_frame_equal(first.ratings, again.ratings)
    monkeypatch.undo()
    loader.load_dataset("synthetic", None, download, small, 8, tmp_path)  # another seed, another folder
    assert len(list((tmp_path / "data").glob("synthetic-*"))) == 2


def test_load_dataset_synthetic_in_ml25m_format_is_a_csv_release_without_users(tmp_path):
    download = {"sources": [], "cache_dir": "data", "timeout_s": 1}
    small = dict(SYNTHETIC, format="ml-25m", n_users=40, n_movies=60, ratings_per_user=25)
    ml = loader.load_dataset("synthetic", None, download, small, 7, tmp_path)
    (folder,) = (tmp_path / "data").glob("synthetic-*")
    assert sorted(p.name for p in folder.iterdir()) == ["movies.csv", "ratings.csv"]
    assert ml.spec.name == "ml-25m" and "demographics" not in ml.spec.feature_groups
    assert list(ml.users.columns) == ["user_id"] and len(ml.users) == 40
    assert len(ml.ratings) == 40 * 25
    assert ml.ratings["rating"].dtype == np.float32 and set(ml.ratings["rating"] * 2) <= set(range(1, 11))
    assert (ml.ratings["rating"] % 1 == 0.5).any()  # half stars do occur


def test_load_dataset_refuses_a_synthetic_format_it_cannot_write(tmp_path):
    download = {"sources": [], "cache_dir": "data", "timeout_s": 1}
    too_many = dict(SYNTHETIC, format="ml-25m", n_movies=50, ratings_per_user=31)
    with pytest.raises(DataError, match=r"synthetic.ratings_per_user=31 .* 30 \(60% of synthetic.n_movies=50\)"):
        loader.load_dataset("synthetic", None, download, too_many, 7, tmp_path)
    with pytest.raises(DataError, match=r"synthetic.format .ml-100k. .*ml-1m.*ml-25m"):
        loader.load_dataset("synthetic", None, download, dict(SYNTHETIC, format="ml-100k"), 7, tmp_path)
    assert not (tmp_path / "data").exists()


# ------------------------------------------------------------------------------------------
# The real files (local copies; never downloaded by tests)


def _shared(name: str) -> Path:
    folder = SHARED_DATA / name
    if not folder.is_dir():
        pytest.skip(
            f"{folder} is absent: set RECSYS_SHARED_DATA to the folder holding ml-100k/ "
            f"and ml-1m-half/ to run the tests on real MovieLens files"
        )
    return folder


@pytest.mark.shared_data
def test_real_ml100k():
    ml = loader.read_movielens("ml-100k", _shared("ml-100k"))
    assert_schema(ml)
    assert (len(ml.users), len(ml.movies), len(ml.ratings)) == (943, 1682, 100000)
    assert ml.ratings["rating"].mean() == pytest.approx(3.52986, abs=1e-5)
    assert ml.movies.set_index("movie_id").loc[1, "genres"] == "Animation|Children's|Comedy"


@pytest.mark.shared_data
def test_real_ml1m_half():
    folder = _shared("ml-1m-half")
    ml = loader.load_dataset("ml-1m", str(folder), {}, {}, 0, REPO_ROOT)
    assert_schema(ml)
    assert (len(ml.users), len(ml.movies), len(ml.ratings)) == (6040, 3883, 487650)
    # Users 3000..6040 are listed but have no ratings in this copy: that must be fine.
    assert ml.ratings["user_id"].max() == 2999
    assert ml.movies.set_index("movie_id").loc[73, "title"] == "Misérables, Les (1995)"
