"""What MovieLens is: the releases GroupLens publishes, their files and checksums, and their codes and genres.

One place for these facts: the downloader, the parser, the feature code and the synthetic
generator all read them from here.
"""

from __future__ import annotations

from dataclasses import dataclass

KNOWN_DATASETS = ("ml-1m", "ml-100k", "ml-10m", "ml-20m", "ml-25m", "synthetic")
# The file formats the synthetic generator can write: a release whose layout it copies.
SYNTHETIC_FORMATS = ("ml-1m", "ml-25m")


class DataError(ValueError):
    """A data file or folder is missing or malformed; the message names the file, line, value and fix."""


# What a release offers beyond (user, movie, rating, time): the feature groups later notebooks use.
FEATURE_GROUPS = ("demographics", "location", "genres", "time")


@dataclass(frozen=True)
class DatasetSpec:
    """What GroupLens publishes for one MovieLens release: its zip's MD5, folder and files, and what they hold.

    Attributes:
        name, md5, folder: the zip `<name>.zip`, GroupLens's MD5 of it, the folder it extracts to.
        files: {"ratings": ..., "movies": ..., and "users" where the release has a users file}.
        layout: how the files are written: "ml-1m" ('::', latin-1), "ml-100k" (tab and '|'),
            "ml-10m" ('::', no users file) or "csv" (ML-20M/25M: comma, header, quoted titles, UTF-8).
        rating_scale: (lowest, highest) rating.
        rating_step: ratings are multiples of it (1: whole stars, 0.5: half stars).
        n_ratings, n_users, n_movies: GroupLens's published sizes, for reference (not enforced: a subset
            such as ml-1m-half is a legitimate input).
        feature_groups: the FEATURE_GROUPS the files carry (no users file: no demographics, no location).
    """

    name: str
    md5: str
    folder: str
    files: dict[str, str]
    layout: str = "ml-1m"
    rating_scale: tuple[float, float] = (1.0, 5.0)
    rating_step: float = 1.0
    n_ratings: int | None = None
    n_users: int | None = None
    n_movies: int | None = None
    feature_groups: tuple[str, ...] = FEATURE_GROUPS


# ML-10M on: half stars, and no users file (so no demographics and no location)
_HALF_STARS_NO_USERS = {"rating_scale": (0.5, 5.0), "rating_step": 0.5, "feature_groups": ("genres", "time")}

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
        layout="ml-100k",
    ),
    "ml-10m": DatasetSpec(
        "ml-10m",
        "ce571fd55effeba0271552578f2648bd",
        "ml-10M100K",
        {"ratings": "ratings.dat", "movies": "movies.dat"},
        layout="ml-10m",
        **_HALF_STARS_NO_USERS,
    ),
    **{
        name: DatasetSpec(
            name,
            md5,
            name,
            {"ratings": "ratings.csv", "movies": "movies.csv"},
            layout="csv",
            n_ratings=n_ratings,
            n_users=n_users,
            n_movies=n_movies,
            **_HALF_STARS_NO_USERS,
        )
        for name, md5, n_ratings, n_users, n_movies in (
            ("ml-20m", "cd245b17a1ae2cc31bb14903e1204af3", 20_000_263, 138_493, 27_278),
            ("ml-25m", "6b51fb2759a8657d3bfcbfc42b592ada", 25_000_095, 162_541, 62_423),
        )
    },
}


def dataset_info(spec: DatasetSpec, dataset: str) -> dict:
    """What a run's later notebooks need to know of its release (the `dataset_info` artifact of a run).

    Keys: dataset (the run's `dataset` param), release, rating_scale [low, high], rating_step,
    feature_groups.
    """
    return {
        "dataset": dataset,
        "release": spec.name,
        "rating_scale": list(spec.rating_scale),
        "rating_step": spec.rating_step,
        "feature_groups": list(spec.feature_groups),
    }


# The header line of each CSV file of the "csv" layout, exactly as GroupLens writes it.
CSV_HEADERS = {"ratings": "userId,movieId,rating,timestamp", "movies": "movieId,title,genres"}


ML1M_AGE_CODES = (1, 18, 25, 35, 45, 50, 56)

# From the ML-1M README ("Occupation is chosen from the following choices").
ML1M_OCCUPATIONS = {
    0: "other or not specified",
    1: "academic/educator",
    2: "artist",
    3: "clerical/admin",
    4: "college/grad student",
    5: "customer service",
    6: "doctor/health care",
    7: "executive/managerial",
    8: "farmer",
    9: "homemaker",
    10: "K-12 student",
    11: "lawyer",
    12: "programmer",
    13: "retired",
    14: "sales/marketing",
    15: "scientist",
    16: "self-employed",
    17: "technician/engineer",
    18: "tradesman/craftsman",
    19: "unemployed",
    20: "writer",
}

# ML-1M's 18 genres in README order; ML-100K adds "unknown" (its u.genre code 0).
GENRES = (
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
# Genres the later releases add (ML-10M on): IMAX, and the label of a movie without genres.
IMAX_GENRE = "IMAX"
NO_GENRES = "(no genres listed)"
UNKNOWN_GENRE = "unknown"
# The order of ML-100K's 19 genre flag columns (its u.genre file).
ML100K_GENRES = (UNKNOWN_GENRE, *GENRES)
