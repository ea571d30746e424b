"""User, movie, time and interaction features built from the parsed MovieLens tables."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from recsys.core.tables import require_columns
from recsys.data import geo
from recsys.data.movielens import GENRES, ML1M_OCCUPATIONS, UNKNOWN_GENRE

AGE_GROUP_LABELS = ("Under 18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
# Left edges of ML-1M's age buckets after the first; ML-1M's codes (1, 18, 25, ...) are the
# buckets' lower bounds, so the same edges bucket both the codes and ML-100K's exact ages.
_AGE_EDGES = np.array([18, 25, 35, 45, 50, 56])

WEEKDAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

# Articles that IMDb-style titles move behind the main title ("City of Lost Children, The").
_ARTICLES = ("The", "An", "A", "Les", "La", "Le", "L'", "Il", "Das", "Der", "Die", "El")
_YEAR_RE = r"^(?P<body>.*?)\s*\((?P<year>\d{4})\)(?P<tail>(?:\s*\((?:V|TV)\))?)\s*$"
# The main title is what precedes the first "(": "(a.k.a. ...)" and translations stay as they are.
_ARTICLE_RE = (
    r"^(?P<main>[^(]+?), (?P<article>" + "|".join(map(re.escape, _ARTICLES)) + r")"
    r"(?P<rest>\s+\(.*\))?$"
)

_USER_COLUMNS = ("user_id", "gender", "age", "occupation", "zip_code")
_MOVIE_COLUMNS = ("movie_id", "title", "genres")
_RATING_COLUMNS = ("user_id", "movie_id", "rating", "timestamp")
# The user attributes of each feature group a release may offer (recsys.data.movielens.FEATURE_GROUPS):
# releases without a users file (ML-10M on) have neither group, and their users table holds only user_id.
DEMOGRAPHIC_COLUMNS = ("gender", "age_group", "occupation")
LOCATION_COLUMNS = ("zip5", "city", "state")
# Movie columns copied onto every interaction (genre_list stays out: lists are slow in Parquet).
_INTERACTION_MOVIE_COLUMNS = ("title_clean", "year", "genres")
# The interactions columns the models, evaluations and simulations read (05 onward): the rating, its
# split and position in the user's timeline (set by `splits`; time order is the position), and its
# context. The rest (timestamps, titles, genres, dates, user attributes) serve EDA; the models take
# movie and user features from the movies and users tables. These columns take 20 bytes a rating
# in memory (0.5 GB at 25M ratings).
EVENT_COLUMNS = ("user_id", "movie_id", "rating", "split", "position", "hour", "weekday", "month")


class FeatureError(ValueError):
    """Input tables that features cannot be built from; the message names the column or value."""


def split_title(titles: pd.Series) -> pd.DataFrame:
    """Split MovieLens titles into a readable title and the release year.

    MovieLens keeps IMDb's sortable form "City of Lost Children, The (1995)"; reports and
    search read better as "The City of Lost Children", and the year is a feature of its own.

    Args:
        titles: raw titles, e.g. "Postman, The (Postino, Il) (1994)"; ML-100K's "unknown" has no year.

    Returns:
        A DataFrame with the same index and columns title_clean (str: the trailing "(YYYY)" removed,
        a trailing article of the main title moved to its front: "The Postman (Postino, Il)") and
        year (Int16, missing when the title has no year).
    """
    titles = titles.astype("str")
    parts = titles.str.extract(_YEAR_RE)
    has_year = parts["year"].notna()
    body = parts["body"].where(has_year, titles.str.strip())
    tail = parts["tail"].where(has_year, "")

    moved = body.str.extract(_ARTICLE_RE)
    has_article = moved["article"].notna()
    # "L'" is elided ("L'Enfer"), every other article is a word of its own.
    separator = pd.Series(np.where(moved["article"].str.endswith("'", na=False), "", " "), index=titles.index)
    with_article_first = moved["article"] + separator + moved["main"] + moved["rest"].fillna("")
    title_clean = with_article_first.where(has_article, body) + tail
    return pd.DataFrame(
        {
            "title_clean": title_clean.astype("str"),
            "year": pd.to_numeric(parts["year"]).astype("Int16"),
        },
        index=titles.index,
    )


def genre_lists(genres: pd.Series) -> pd.Series:
    """Turn "|"-joined genre strings into lists of genre names.

    Args:
        genres: strings such as "Animation|Children's|Comedy"; "" or missing means no genre.

    Returns:
        A Series of lists with the same index ([] where there is no genre).
    """
    return pd.Series(
        [value.split("|") if value else [] for value in genres.fillna("").astype("str")],
        index=genres.index,
        dtype=object,
        name="genre_list",
    )


def genre_column(genre: str) -> str:
    """The multi-hot column name of a genre: a safe identifier, e.g. "Children's" -> "genre_Childrens".

    Args:
        genre: a genre name as written in the MovieLens files.

    Returns:
        "genre_" + the name without apostrophes, other non-alphanumeric runs replaced by "_".
    """
    return "genre_" + re.sub(r"[^0-9A-Za-z]+", "_", genre.replace("'", "")).strip("_")


def genre_columns(frame: pd.DataFrame) -> list[str]:
    """The multi-hot genre columns of a movie or interaction table, in their order (genre_list excluded).

    Args:
        frame: a table made by `movie_features` or `build_interactions`.

    Returns:
        The names of its int8 "genre_*" columns.
    """
    return [
        name
        for name in frame.columns
        if name.startswith("genre_") and name != "genre_list" and frame[name].dtype == np.int8
    ]


def genre_multi_hot(genres: pd.Series) -> pd.DataFrame:
    """One 0/1 column per genre, the form models and diversity metrics take genres in.

    Args:
        genres: "|"-joined genre strings ("" or missing: no genre).

    Returns:
        A DataFrame with the same index and one int8 column per genre that occurs, named by
        `genre_column` (genre_Action, genre_Childrens, genre_Film_Noir, genre_Sci_Fi, ...), in
        GENRES order, then genre_unknown if it occurs, then any other genre in alphabetical order.
    """
    dummies = genres.fillna("").astype("str").str.get_dummies(sep="|")
    dummies = dummies.drop(columns="", errors="ignore")  # "" is "no genre", not a genre
    present = set(dummies.columns)
    order = [name for name in GENRES if name in present]
    order += [UNKNOWN_GENRE] if UNKNOWN_GENRE in present else []
    order += sorted(present - set(GENRES) - {UNKNOWN_GENRE})
    multi_hot = dummies[order].astype(np.int8)
    multi_hot.columns = [genre_column(name) for name in order]
    return multi_hot.set_axis(genres.index)


def age_groups(ages: pd.Series) -> pd.Series:
    """Bucket ages into ML-1M's age groups, for ML-1M's bucket codes and ML-100K's exact ages alike.

    Args:
        ages: ML-1M codes (1, 18, 25, 35, 45, 50, 56) or exact ages in years.

    Returns:
        An ordered Categorical Series of AGE_GROUP_LABELS with the same index (missing where age is).
    """
    values = ages.to_numpy(dtype="float64", na_value=np.nan)
    codes = np.searchsorted(_AGE_EDGES, values, side="right")
    codes = np.where(np.isnan(values), -1, codes)
    return pd.Series(
        pd.Categorical.from_codes(codes, categories=list(AGE_GROUP_LABELS), ordered=True),
        index=ages.index,
        name="age_group",
    )


def decode_occupations(occupations: pd.Series) -> pd.Series:
    """Occupation names for ML-1M's numeric codes; ML-100K's names are kept as they are.

    Args:
        occupations: strings, either a code "0".."20" (ML-1M) or a name such as "technician" (ML-100K).

    Returns:
        A str Series of occupation names with the same index.

    Raises:
        FeatureError: a numeric code that ML-1M does not define.
    """
    values = occupations.astype("str").str.strip()
    is_code = values.str.fullmatch(r"\d+", na=False)
    names = pd.to_numeric(values.where(is_code)).map(ML1M_OCCUPATIONS)
    undefined = is_code & names.isna()
    if undefined.any():
        bad = sorted(values[undefined].unique().tolist())[:5]
        raise FeatureError(
            f"users.occupation has codes {bad} that ML-1M does not define (valid: 0..20); "
            "check that the users file is MovieLens 1M"
        )
    return values.where(~is_code, names).astype("str").rename("occupation")


def user_features(
    users: pd.DataFrame, geo_backend: str = "zipcodes", uszipcode_db: str | None = None
) -> tuple[pd.DataFrame, dict]:
    """Readable user attributes: age group, occupation name, 5-digit ZIP, city and state.

    A release without a users file (ML-10M, ML-20M, ML-25M) gives a users table with user_id only:
    then there is nothing to derive, the table is returned as it is and zip_stats is None.

    Args:
        users: the parsed users table (user_id, gender, age, occupation, zip_code), or user_id only.
        geo_backend: ZIP database, one of geo.GEO_BACKENDS.
        uszipcode_db: path to uszipcode's simple_db.sqlite (uszipcode backend only).

    Returns:
        (features, zip_stats). features has columns user_id, gender, age, age_group, occupation,
        zip_code (raw), zip5, city, state, in users' row order and index. zip_stats holds n_users,
        n_zip_invalid (not a US ZIP, so no location), n_zip_unresolved (a 5-digit ZIP the backend
        does not know), zip_state_resolved_share (users with a state / all users) and geo_backend;
        None when the table has user_id only.

    Raises:
        FeatureError: a required column is missing or an occupation code is undefined.
        geo.GeoError: the geo backend cannot be used.
    """
    if list(users.columns) == ["user_id"]:
        return users.copy(), None
    require_columns(users, _USER_COLUMNS, "users", FeatureError)
    zip5 = geo.standardize_zip(users["zip_code"])
    location = geo.lookup_city_state(zip5, backend=geo_backend, uszipcode_db=uszipcode_db)
    features = pd.DataFrame(
        {
            "user_id": users["user_id"],
            "gender": users["gender"],
            "age": users["age"],
            "age_group": age_groups(users["age"]),
            "occupation": decode_occupations(users["occupation"]),
            "zip_code": users["zip_code"],
            "zip5": zip5,
            "city": location["city"],
            "state": location["state"],
        },
        index=users.index,
    )
    n_users = len(features)
    has_state = features["state"].notna()
    zip_stats = {
        "n_users": n_users,
        "n_zip_invalid": int(zip5.isna().sum()),
        "n_zip_unresolved": int((zip5.notna() & ~has_state).sum()),
        "zip_state_resolved_share": float(has_state.sum() / n_users) if n_users else 0.0,
        "geo_backend": geo_backend,
    }
    return features, zip_stats


def movie_features(movies: pd.DataFrame) -> pd.DataFrame:
    """Movie table with clean title, release year, genre list and genre multi-hot columns.

    Args:
        movies: the parsed movies table (movie_id, title, genres).

    Returns:
        A DataFrame with columns movie_id, title (raw), title_clean, year, genres (the "|" string),
        genre_list and the genre_* multi-hot columns, in movies' row order and index.

    Raises:
        FeatureError: a required column is missing.
    """
    require_columns(movies, _MOVIE_COLUMNS, "movies", FeatureError)
    genres = movies["genres"].fillna("").astype("str")
    titles = split_title(movies["title"])
    return pd.concat(
        [
            movies[["movie_id", "title"]],
            titles,
            genres.rename("genres"),
            genre_lists(genres),
            genre_multi_hot(genres),
        ],
        axis=1,
    )


def time_features(timestamps: pd.Series) -> pd.DataFrame:
    """Calendar features of rating times, in UTC (MovieLens timestamps carry no time zone).

    Computed with integer arithmetic on the seconds rather than per-row datetime accessors, so
    a million ratings take milliseconds.

    Args:
        timestamps: unix seconds.

    Returns:
        A DataFrame with the same index and columns datetime (tz-aware UTC), hour (int8, 0-23),
        weekday (int8, 0 = Monday), weekday_name (ordered Categorical), month (int8, 1-12), year (int16).

    Raises:
        FeatureError: a timestamp is missing.
    """
    if timestamps.isna().any():
        raise FeatureError(f"{timestamps.isna().sum()} timestamps are missing; every rating needs a time")
    seconds = timestamps.to_numpy(dtype="int64")
    days = np.floor_divide(seconds, 86_400)
    weekday = ((days + 3) % 7).astype(np.int8)  # 1970-01-01 was a Thursday (3 with Monday = 0)
    months_since_epoch = seconds.astype("datetime64[s]").astype("datetime64[M]").astype("int64")
    return pd.DataFrame(
        {
            "datetime": pd.to_datetime(seconds, unit="s", utc=True),
            "hour": (np.mod(seconds, 86_400) // 3_600).astype(np.int8),
            "weekday": weekday,
            "weekday_name": pd.Categorical.from_codes(weekday, categories=list(WEEKDAY_NAMES), ordered=True),
            "month": (months_since_epoch % 12 + 1).astype(np.int8),
            "year": (months_since_epoch // 12 + 1970).astype(np.int16),
        },
        index=timestamps.index,
    )


def build_interactions(ratings: pd.DataFrame, users_feat: pd.DataFrame, movies_feat: pd.DataFrame) -> pd.DataFrame:
    """One row per rating with its time, user and movie features: the table every notebook reads.

    Joins are positional look-ups on the unique user and movie ids (no per-rating work), so
    ML-1M's million ratings take well under a second.

    Args:
        ratings: the parsed ratings (user_id, movie_id, rating, timestamp, and any further columns).
        users_feat: the output of `user_features` (its user attributes, where it has them).
        movies_feat: the output of `movie_features`.

    Returns:
        ratings' columns, then datetime, hour, weekday, weekday_name, month, rating_year (the
        rating's year; `year` is the movie's), gender, age_group, occupation, zip5, city, state
        (those users_feat has: none for a release without a users file), title_clean, year, genres and the genre_* multi-hot columns; same row order and index as
        ratings.

    Raises:
        FeatureError: a required column is missing, ids repeat in a feature table, a rating names a
            user or movie the feature tables lack, or ratings already has a feature column's name.
    """
    require_columns(ratings, _RATING_COLUMNS, "ratings", FeatureError)
    user_columns = user_attribute_columns(users_feat)
    require_columns(users_feat, ("user_id",), "users_feat", FeatureError)
    require_columns(movies_feat, ("movie_id", *_INTERACTION_MOVIE_COLUMNS), "movies_feat", FeatureError)

    times = time_features(ratings["timestamp"]).rename(columns={"year": "rating_year"})
    user_rows = _positions(users_feat["user_id"], ratings["user_id"], "user_id", "users_feat")
    movie_rows = _positions(movies_feat["movie_id"], ratings["movie_id"], "movie_id", "movies_feat")
    movie_columns = [*_INTERACTION_MOVIE_COLUMNS, *genre_columns(movies_feat)]
    parts = [
        ratings.reset_index(drop=True),
        times.reset_index(drop=True),
        users_feat[user_columns].take(user_rows).reset_index(drop=True),
        movies_feat[movie_columns].take(movie_rows).reset_index(drop=True),
    ]
    clashes = sorted(set(ratings.columns) & set().union(*(part.columns for part in parts[1:])))
    if clashes:
        raise FeatureError(
            f"ratings already has the feature columns {clashes}; pass the parsed ratings, not an interactions table"
        )
    return pd.concat(parts, axis=1).set_axis(ratings.index)


def user_attribute_columns(users_feat: pd.DataFrame) -> list[str]:
    """The user attribute columns a users (or interactions) table carries, by whole feature group.

    A group is all or nothing: a table with some of a group's columns but not all is refused, so
    a half-built table cannot pass for a release without that group.

    Raises:
        FeatureError: a group is incomplete, naming the columns it lacks.
    """
    columns = []
    for name, group in (("demographics", DEMOGRAPHIC_COLUMNS), ("location", LOCATION_COLUMNS)):
        present = [c for c in group if c in users_feat.columns]
        if present and len(present) < len(group):
            missing = [c for c in group if c not in present]
            raise FeatureError(
                f"the {name} columns are incomplete: {present} present, {missing} missing; "
                "build the users table with features.user_features"
            )
        columns += present
    return columns


def _positions(keys: pd.Series, values: pd.Series, column: str, table: str) -> np.ndarray:
    """Row positions in `keys` of each of `values`; every value must occur exactly once in keys."""
    index = pd.Index(keys)
    if not index.is_unique:
        repeated = index[index.duplicated()].unique().tolist()[:5]
        raise FeatureError(f"{table}.{column} must be unique, but {repeated} repeat")
    positions = index.get_indexer(values)
    if (positions < 0).any():
        missing = pd.unique(values[positions < 0])[:5].tolist()
        raise FeatureError(
            f"ratings name {column} values that {table} lacks, e.g. {missing}; "
            "build the feature tables from the same dataset as the ratings"
        )
    return positions
