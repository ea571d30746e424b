"""What MovieLens is: the releases GroupLens publishes, their files and checksums, and their codes and genres.

One place for these facts: the downloader, the parser, the feature code and the synthetic
generator all read them from here.
"""

from __future__ import annotations

from dataclasses import dataclass

KNOWN_DATASETS = ("ml-1m", "ml-100k", "synthetic")


class DataError(ValueError):
    """A data file or folder is missing or malformed; the message names the file, line, value and fix."""


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
UNKNOWN_GENRE = "unknown"
# The order of ML-100K's 19 genre flag columns (its u.genre file).
ML100K_GENRES = (UNKNOWN_GENRE, *GENRES)
