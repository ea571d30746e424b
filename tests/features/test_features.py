"""Features: titles, genres, age groups, occupations, time, interactions; speed and ZIP coverage on real data."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from recsys.features.preprocessing import (
    AGE_GROUP_LABELS,
    GENRES,
    ML1M_OCCUPATIONS,
    FeatureError,
    build_interactions,
    genre_columns,
    genre_lists,
    genre_multi_hot,
    movie_features,
    split_title,
    time_features,
    user_attribute_columns,
    user_features,
)


def make_users() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": np.array([1, 2, 3, 4], dtype="int32"),
            "gender": ["F", "M", "M", "F"],
            "age": np.array([1, 56, 25, 45], dtype="int16"),
            "occupation": ["10", "16", "0", "20"],
            "zip_code": ["48067", "98107-2117", "T8N5H", "00000"],
        }
    )


def make_movies() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "movie_id": np.array([1, 29, 58, 72], dtype="int32"),
            "title": [
                "Toy Story (1995)",
                "City of Lost Children, The (1995)",
                "Postman, The (Postino, Il) (1994)",
                "Misérables, Les (1995)",
            ],
            "genres": ["Animation|Children's|Comedy", "Adventure|Sci-Fi", "Drama|Romance", ""],
        }
    )


def make_ratings() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": np.array([2, 1, 2, 3, 1, 4], dtype="int32"),
            "movie_id": np.array([58, 1, 29, 1, 72, 58], dtype="int32"),
            "rating": np.array([5, 3, 4, 1, 2, 4], dtype="int8"),
            "timestamp": np.array([978300760, 978302109, 0, 956703932, 1046454590, 978824291], dtype="int64"),
        },
        index=[60, 50, 40, 30, 20, 10],
    )


# --- titles -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("title", "clean", "year"),
    [
        ("Toy Story (1995)", "Toy Story", 1995),
        ("City of Lost Children, The (1995)", "The City of Lost Children", 1995),
        ("Postman, The (Postino, Il) (1994)", "The Postman (Postino, Il)", 1994),
        ("Postino, Il (The Postman) (1994)", "Il Postino (The Postman)", 1994),
        (
            "Professional, The (a.k.a. Leon: The Professional) (1994)",
            "The Professional (a.k.a. Leon: The Professional)",
            1994,
        ),
        ("Walk in the Clouds, A (1995)", "A Walk in the Clouds", 1995),
        ("Awfully Big Adventure, An (1995)", "An Awfully Big Adventure", 1995),
        ("Enfer, L' (1994)", "L'Enfer", 1994),
        ("Boot, Das (1981)", "Das Boot", 1981),
        ("Bewegte Mann, Der (1994)", "Der Bewegte Mann", 1994),
        ("Mariachi, El (1992)", "El Mariachi", 1992),
        ("Bamba, La (1987)", "La Bamba", 1987),
        ("Colonel Chabert, Le (1994)", "Le Colonel Chabert", 1994),
        ("Misérables, Les (1995)", "Les Misérables", 1995),
        ("Hate (Haine, La) (1995)", "Hate (Haine, La)", 1995),  # the article belongs to the alias
        ("Maybe, Maybe Not (Bewegte Mann, Der) (1994)", "Maybe, Maybe Not (Bewegte Mann, Der)", 1994),
        (
            "Adventures of Priscilla, Queen of the Desert, The (1994)",
            "The Adventures of Priscilla, Queen of the Desert",
            1994,
        ),
        (
            "Seven Samurai (The Magnificent Seven) (Shichinin no samurai) (1954)",
            "Seven Samurai (The Magnificent Seven) (Shichinin no samurai)",
            1954,
        ),
        ("Heidi Fleiss: Hollywood Madam (1995) ", "Heidi Fleiss: Hollywood Madam", 1995),
        (
            "Land Before Time III: The Time of the Great Giving (1995) (V)",
            "Land Before Time III: The Time of the Great Giving (V)",
            1995,
        ),
        ("unknown", "unknown", None),
        ("1776 (1972)", "1776", 1972),
    ],
)
def test_split_title(title, clean, year):
    result = split_title(pd.Series([title], index=[7]))
    assert result.index.tolist() == [7]
    assert result.loc[7, "title_clean"] == clean
    assert pd.isna(result.loc[7, "year"]) if year is None else result.loc[7, "year"] == year


def test_split_title_types_and_latin1_text_untouched():
    titles = pd.Series(["Cold Fever (Á köldum klaka) (1994)", "Alien³ (1992)", "unknown"])
    result = split_title(titles)
    assert result["year"].dtype == "Int16"
    assert result["title_clean"].tolist() == ["Cold Fever (Á köldum klaka)", "Alien³", "unknown"]
    assert result["year"].isna().tolist() == [False, False, True]


# --- genres -------------------------------------------------------------------------------------


def test_genre_lists_and_empty_genres():
    lists = genre_lists(pd.Series(["Animation|Children's", "", None], index=[3, 2, 1]))
    assert lists.index.tolist() == [3, 2, 1]
    assert lists.tolist() == [["Animation", "Children's"], [], []]


def test_genre_multi_hot_columns_in_readme_order_with_safe_names():
    genres = pd.Series(["Sci-Fi|Film-Noir", "Children's|Action", "", "unknown", "Action"], index=list("abcde"))
    multi_hot = genre_multi_hot(genres)
    assert list(multi_hot.columns) == [
        "genre_Action",
        "genre_Childrens",
        "genre_Film_Noir",
        "genre_Sci_Fi",
        "genre_unknown",
    ]
    assert (multi_hot.dtypes == np.int8).all()
    assert multi_hot.index.equals(genres.index)
    assert multi_hot.loc["a"].tolist() == [0, 0, 1, 1, 0]
    assert multi_hot.loc["c"].sum() == 0
    assert multi_hot.loc["d", "genre_unknown"] == 1


def test_all_genres_give_18_columns():
    multi_hot = genre_multi_hot(pd.Series(["|".join(GENRES)]))
    assert len(GENRES) == 18 and multi_hot.shape == (1, 18)
    assert multi_hot.iloc[0].tolist() == [1] * 18


# --- users --------------------------------------------------------------------------------------


def test_user_features_ml1m_codes():
    features, stats = user_features(make_users())
    assert list(features.columns) == [
        "user_id",
        "gender",
        "age",
        "age_group",
        "occupation",
        "zip_code",
        "zip5",
        "city",
        "state",
    ]
    assert features["age_group"].tolist() == ["Under 18", "56+", "25-34", "45-49"]
    assert features["age_group"].cat.ordered
    assert list(features["age_group"].cat.categories) == list(AGE_GROUP_LABELS)
    assert features["occupation"].tolist() == ["K-12 student", "self-employed", "other or not specified", "writer"]
    assert features["zip_code"].tolist() == ["48067", "98107-2117", "T8N5H", "00000"]
    assert features.loc[1, ["zip5", "city", "state"]].tolist() == ["98107", "Seattle", "WA"]
    assert features.loc[0, ["city", "state"]].tolist() == ["Royal Oak", "MI"]
    assert features.loc[[2, 3], "state"].isna().all()
    assert stats == {
        "n_users": 4,
        "n_zip_invalid": 1,  # T8N5H
        "n_zip_unresolved": 1,  # 00000
        "zip_state_resolved_share": 0.5,
        "geo_backend": "zipcodes",
    }


def test_user_features_ml100k_exact_ages_and_names():
    users = pd.DataFrame(
        {
            "user_id": np.array([1, 2, 3, 4, 5, 6], dtype="int32"),
            "gender": ["M", "F", "M", "F", "M", "F"],
            "age": np.array([7, 17, 18, 24, 49, 73], dtype="int16"),
            "occupation": ["technician", "other", "writer", "none", "student", "retired"],
            "zip_code": ["85711", "94043", "32067", "43537", "15213", "V3N4P"],
        }
    )
    features, stats = user_features(users)
    assert features["age_group"].tolist() == ["Under 18", "Under 18", "18-24", "18-24", "45-49", "56+"]
    assert features["occupation"].tolist() == users["occupation"].tolist()
    assert stats["n_zip_invalid"] == 1


def test_age_group_edges():
    users = make_users().iloc[[0] * 8].reset_index(drop=True)
    users["user_id"] = np.arange(8, dtype="int32")
    users["age"] = np.array([17, 18, 34, 35, 44, 45, 50, 56], dtype="int16")
    features, _ = user_features(users)
    assert features["age_group"].tolist() == ["Under 18", "18-24", "25-34", "35-44", "35-44", "45-49", "50-55", "56+"]


def test_occupation_codes_match_the_readme():
    assert len(ML1M_OCCUPATIONS) == 21 and sorted(ML1M_OCCUPATIONS) == list(range(21))
    assert ML1M_OCCUPATIONS[12] == "programmer" and ML1M_OCCUPATIONS[17] == "technician/engineer"


def test_undefined_occupation_code_is_reported():
    users = make_users()
    users.loc[0, "occupation"] = "21"
    with pytest.raises(FeatureError, match=r"occupation.*\['21'\]"):
        user_features(users)


def test_missing_user_column_is_named():
    with pytest.raises(FeatureError, match="zip_code"):
        user_features(make_users().drop(columns="zip_code"))


# --- movies -------------------------------------------------------------------------------------


def test_movie_features():
    movies = make_movies()
    features = movie_features(movies)
    assert features.columns[:6].tolist() == ["movie_id", "title", "title_clean", "year", "genres", "genre_list"]
    assert features["title"].tolist() == movies["title"].tolist()
    assert features["title_clean"].tolist() == [
        "Toy Story",
        "The City of Lost Children",
        "The Postman (Postino, Il)",
        "Les Misérables",
    ]
    assert features["genre_list"].tolist()[3] == []
    assert genre_columns(features) == [
        "genre_Adventure",
        "genre_Animation",
        "genre_Childrens",
        "genre_Comedy",
        "genre_Drama",
        "genre_Romance",
        "genre_Sci_Fi",
    ]
    assert features.loc[0, "genre_Childrens"] == 1 and features.loc[3, genre_columns(features)].sum() == 0


# --- time ---------------------------------------------------------------------------------------


def test_time_features_at_a_known_timestamp():
    # 978300760 is 2000-12-31 22:12:40 UTC, a Sunday; 0 is 1970-01-01, a Thursday.
    times = time_features(pd.Series([978300760, 0, 951782400], index=[9, 8, 7]))
    assert times.index.tolist() == [9, 8, 7]
    first = times.loc[9]
    assert (first["hour"], first["weekday"], first["weekday_name"], first["month"], first["year"]) == (
        22,
        6,
        "Sunday",
        12,
        2000,
    )
    assert first["datetime"] == pd.Timestamp("2000-12-31 22:12:40", tz="UTC")
    assert times.loc[8, ["hour", "weekday", "month", "year"]].tolist() == [0, 3, 1, 1970]
    assert times.loc[7, ["month", "year"]].tolist() == [2, 2000]  # 2000-02-29, a leap day
    assert times["hour"].dtype == np.int8 and times["year"].dtype == np.int16
    assert str(times["datetime"].dt.tz) == "UTC"


def test_time_features_agree_with_pandas_calendar():
    seconds = pd.Series(np.random.default_rng(0).integers(0, 2_000_000_000, 2_000))
    times = time_features(seconds)
    stamps = pd.to_datetime(seconds, unit="s", utc=True)
    assert (times["hour"] == stamps.dt.hour).all()
    assert (times["weekday"] == stamps.dt.weekday).all()
    assert (times["month"] == stamps.dt.month).all()
    assert (times["year"] == stamps.dt.year).all()


# --- interactions -------------------------------------------------------------------------------


def test_build_interactions_keeps_rows_and_order():
    ratings = make_ratings()
    users_feat, _ = user_features(make_users())
    movies_feat = movie_features(make_movies())
    interactions = build_interactions(ratings, users_feat, movies_feat)
    assert interactions.index.equals(ratings.index)
    assert interactions[["user_id", "movie_id", "rating", "timestamp"]].equals(ratings)
    assert "genre_list" not in interactions.columns
    assert interactions["rating_year"].tolist() == [2000, 2000, 1970, 2000, 2003, 2001]
    assert interactions.loc[60, ["city", "state", "title_clean", "year"]].tolist() == [
        "Seattle",
        "WA",
        "The Postman (Postino, Il)",
        1994,
    ]
    assert interactions.loc[50, "occupation"] == "K-12 student"
    assert interactions.loc[50, "genre_Animation"] == 1 and interactions.loc[60, "genre_Animation"] == 0
    assert genre_columns(interactions) == genre_columns(movies_feat)


def test_users_without_attributes_pass_through_and_interactions_carry_none():
    """A release without a users file (ML-10M on): user_id only, no ZIP statistics, no user columns."""
    ids_only = make_users()[["user_id"]]
    users_feat, zip_stats = user_features(ids_only)
    assert zip_stats is None and list(users_feat.columns) == ["user_id"]
    interactions = build_interactions(make_ratings(), users_feat, movie_features(make_movies()))
    assert not {"gender", "age_group", "occupation", "zip5", "city", "state"} & set(interactions.columns)
    assert interactions.loc[60, "title_clean"] == "The Postman (Postino, Il)"
    assert user_attribute_columns(users_feat) == []


def test_a_half_built_feature_group_is_refused():
    users_feat, _ = user_features(make_users())
    assert user_attribute_columns(users_feat) == ["gender", "age_group", "occupation", "zip5", "city", "state"]
    assert user_attribute_columns(users_feat.drop(columns=["zip5", "city", "state"])) == [
        "gender",
        "age_group",
        "occupation",
    ]
    with pytest.raises(FeatureError, match=r"location columns are incomplete: \['zip5', 'state'\] present, \['city'\]"):
        build_interactions(make_ratings(), users_feat.drop(columns=["city"]), movie_features(make_movies()))


def test_build_interactions_rejects_unknown_ids():
    users_feat, _ = user_features(make_users())
    movies_feat = movie_features(make_movies())
    ratings = make_ratings()
    ratings.loc[10, "movie_id"] = 999
    with pytest.raises(FeatureError, match=r"movie_id.*\[999\]"):
        build_interactions(ratings, users_feat, movies_feat)


# --- real data ----------------------------------------------------------------------------------


def read_ml1m(folder) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """A minimal ML-1M reader in the schema of recsys.data.loader (kept here so this test needs only the files)."""
    # "::" read as ":" with the empty fields between skipped keeps the fast C parser for the two
    # files whose values never contain ":"; titles can, so movies.dat goes through the python engine.
    users = pd.read_csv(
        folder / "users.dat",
        sep=":",
        header=None,
        usecols=[0, 2, 4, 6, 8],
        encoding="latin-1",
        names=["user_id", "x1", "gender", "x2", "age", "x3", "occupation", "x4", "zip_code"],
        dtype={"user_id": "int32", "gender": "str", "age": "int16", "occupation": "str", "zip_code": "str"},
    )
    movies = pd.read_csv(
        folder / "movies.dat",
        sep="::",
        engine="python",
        header=None,
        encoding="latin-1",
        names=["movie_id", "title", "genres"],
        dtype={"movie_id": "int32", "title": "str", "genres": "str"},
        keep_default_na=False,
    )
    ratings = pd.read_csv(
        folder / "ratings.dat",
        sep=":",
        header=None,
        usecols=[0, 2, 4, 6],
        names=["user_id", "x1", "movie_id", "x2", "rating", "x3", "timestamp"],
        dtype={"user_id": "int32", "movie_id": "int32", "rating": "int8", "timestamp": "int64"},
    )
    return users, movies, ratings


@pytest.mark.shared_data
def test_ml1m_half_features_are_fast_and_zips_resolve(shared_data):
    users, movies, ratings = read_ml1m(shared_data / "ml-1m-half")
    assert len(ratings) == 487_650 and len(users) == 6_040

    start = time.perf_counter()
    users_feat, zip_stats = user_features(users)
    movies_feat = movie_features(movies)
    interactions = build_interactions(ratings, users_feat, movies_feat)
    wall_s = time.perf_counter() - start

    print(f"\nML-1M zip stats (zipcodes backend): {zip_stats}; feature building {wall_s:.2f} s")
    assert zip_stats["zip_state_resolved_share"] > 0.9
    assert wall_s < 5.0
    assert len(interactions) == len(ratings)
    assert interactions[["user_id", "movie_id"]].equals(ratings[["user_id", "movie_id"]])
    assert len(genre_columns(interactions)) == 18
    assert movies_feat["year"].notna().all()
    assert interactions[["gender", "age_group", "occupation", "title_clean"]].notna().all().all()
