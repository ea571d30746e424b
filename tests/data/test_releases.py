"""The later MovieLens releases (ML-10M, ML-20M, ML-25M) read strictly, from tiny files written here."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.data import download, loader, movielens
from recsys.data.movielens import DataError

MOVIES_CSV = (
    "movieId,title,genres\n"
    '1,"American President, The (1995)",Comedy|Drama|Romance\n'
    "2,Amélie (Fabuleux destin d'Amélie Poulain; Le) (2001),Comedy|Romance\n"
    "3,Avatar (2009),Action|Adventure|Sci-Fi|IMAX\n"
    "4,Some Documentary (2015),(no genres listed)\n"
)
RATINGS_CSV = (
    "userId,movieId,rating,timestamp\n1,1,4.0,1112486027\n1,3,3.5,1112484676\n2,2,0.5,1112484819\n7,4,5.0,1094785740\n"
)


def write_csv_release(folder, movies=MOVIES_CSV, ratings=RATINGS_CSV):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "movies.csv").write_text(movies, encoding="utf-8")
    (folder / "ratings.csv").write_text(ratings, encoding="utf-8")
    return folder


def write_ml10m(folder, ratings="1::1::4.5::838985046\n1::3::2::838983525\n5::2::0.5::838983392\n"):
    folder.mkdir(parents=True, exist_ok=True)
    movies = "1::Toy Story (1995)::Adventure|Animation|Children|Comedy|Fantasy\n2::Café (2001)::Drama\n3::Avatar (2009)::Action|IMAX\n"
    (folder / "movies.dat").write_text(movies, encoding="utf-8")
    (folder / "ratings.dat").write_text(ratings, encoding="utf-8")
    return folder


@pytest.mark.parametrize("release", ["ml-20m", "ml-25m"])
def test_csv_release_reads_quoted_titles_half_stars_and_new_genres(tmp_path, release):
    ml = loader.read_movielens(release, write_csv_release(tmp_path / release))
    assert ml.movies["title"].tolist()[:2] == [
        "American President, The (1995)",
        "Amélie (Fabuleux destin d'Amélie Poulain; Le) (2001)",
    ]
    assert ml.movies["genres"].tolist()[2:] == ["Action|Adventure|Sci-Fi|IMAX", "(no genres listed)"]
    assert ml.ratings["rating"].dtype == np.float32 and ml.ratings["rating"].tolist() == [4.0, 3.5, 0.5, 5.0]
    assert ml.ratings.dtypes["user_id"] == np.int32 and ml.ratings.dtypes["timestamp"] == np.int64
    # no users file: the users are the ones who rate, with nothing else known, and the spec says so
    assert ml.users.columns.tolist() == ["user_id"] and ml.users["user_id"].tolist() == [1, 2, 7]
    assert ml.spec.rating_scale == (0.5, 5.0) and "demographics" not in ml.spec.feature_groups


def test_ml10m_reads_double_colon_files_with_half_stars(tmp_path):
    ml = loader.read_movielens("ml-10m", write_ml10m(tmp_path / "ml-10M100K"))
    assert ml.ratings["rating"].tolist() == [4.5, 2.0, 0.5] and ml.ratings["rating"].dtype == np.float32
    assert ml.movies["title"].tolist()[1] == "Café (2001)" and ml.users["user_id"].tolist() == [1, 5]
    # data_dir may be the parent of the release's folder, as for the other releases
    assert download.locate_files("ml-10m", tmp_path)["ratings"] == tmp_path / "ml-10M100K" / "ratings.dat"


@pytest.mark.parametrize(
    ("movies", "ratings", "message"),
    [
        (MOVIES_CSV, RATINGS_CSV.replace("userId,movieId", "user_id,movieId"), "ratings.csv line 1: header 'user_id"),
        (MOVIES_CSV.replace("movieId,title,genres", "movieId;title;genres"), RATINGS_CSV, "movies.csv line 1: header"),
        (
            MOVIES_CSV,
            RATINGS_CSV.replace("1,3,3.5", "1,3,5.5"),
            "ratings.csv line 3: rating '5.5' is outside the scale 0.5..5",
        ),
        (MOVIES_CSV, RATINGS_CSV.replace("1,3,3.5", "1,3,3.25"), "line 3: rating '3.25' is not a multiple of 0.5"),
        (MOVIES_CSV, RATINGS_CSV.replace("2,2,0.5", "2,2,good"), "ratings.csv line 4: rating 'good' is not a number"),
        (
            MOVIES_CSV,
            RATINGS_CSV.replace("7,4,5.0", "7,9,5.0"),
            "ratings.csv line 5: movie id '9' is not in movies.csv",
        ),
        (
            MOVIES_CSV,
            RATINGS_CSV.replace("1,1,4.0,", "1,1,4.0,7,"),
            "ratings.csv line 2: expected 4 comma-separated fields, found 5",
        ),
        (
            MOVIES_CSV,
            RATINGS_CSV + "1,1,3.0,1112486099\n",
            "ratings.csv line 6: user '1' rates movie '1' again (first on line 2)",
        ),
        (MOVIES_CSV, RATINGS_CSV.replace("2,2,0.5", "x2,2,0.5"), "ratings.csv line 4: user id 'x2' is not an integer"),
        # an unquoted comma in a title is one field too many
        (
            MOVIES_CSV.replace('"American President, The (1995)"', "American President, The (1995)"),
            RATINGS_CSV,
            "movies.csv line 2: expected 3 fields (movieId,title,genres), found 4",
        ),
        (
            MOVIES_CSV + "4,Again (2000),Drama\n",
            RATINGS_CSV,
            "movies.csv line 6: movie id '4' is repeated (first on line 5)",
        ),
    ],
)
def test_a_bad_line_of_a_csv_release_names_file_line_and_value(tmp_path, movies, ratings, message):
    folder = write_csv_release(tmp_path / "ml-25m", movies, ratings)
    with pytest.raises(DataError) as error:
        loader.read_movielens("ml-25m", folder)
    assert message in str(error.value)


def test_csv_edge_cases_still_name_file_line_and_value(tmp_path):
    folder = write_csv_release(
        tmp_path / "ml-25m", ratings=RATINGS_CSV.replace("2,2,0.5", "99999999999999999999,2,0.5")
    )
    with pytest.raises(
        DataError, match=r"ratings.csv line 4: user id '99999999999999999999' is not an integer 1..2147483647"
    ):
        loader.read_movielens("ml-25m", folder)
    folder = write_csv_release(tmp_path / "cr", ratings=RATINGS_CSV.replace("1,3,3.5", "1,3\r,3.5"))
    with pytest.raises(DataError, match="ratings.csv line 3: stray carriage return"):
        loader.read_movielens("ml-25m", folder)
    # a quoted title over two lines: later lines keep their physical numbers
    spanning = (
        MOVIES_CSV.replace('"American President, The (1995)"', '"American President,\nThe (1995)"')
        + "2,Again (2000),Drama\n"
    )
    with pytest.raises(DataError, match=r"movies.csv line 7: movie id '2' is repeated \(first on line 4\)"):
        loader.read_movielens("ml-25m", write_csv_release(tmp_path / "span", movies=spanning))


def test_a_csv_release_that_is_not_utf8_is_refused_at_its_line(tmp_path):
    folder = write_csv_release(tmp_path / "ml-20m")
    (folder / "movies.csv").write_bytes(MOVIES_CSV.replace("Amélie", "Am\xe9lie", 1).encode("latin-1"))
    with pytest.raises(DataError, match=r"movies.csv line 3: bytes b'\\xe9lie' are not UTF-8"):
        loader.read_movielens("ml-20m", folder)


@pytest.mark.parametrize(
    ("ratings", "message"),
    [
        (
            "1::1::4.5::838985046\n1::3::5.5::838983525\n",
            "ratings.dat line 2: rating '5.5' is outside the scale 0.5..5",
        ),
        ("1::1::4.25::838985046\n", "ratings.dat line 1: rating '4.25' is not a multiple of 0.5"),
        ("1::1::4.5\n", "ratings.dat line 1: expected 4 fields separated by '::', found 3"),
    ],
)
def test_a_bad_line_of_ml10m_names_file_line_and_value(tmp_path, ratings, message):
    with pytest.raises(DataError) as error:
        loader.read_movielens("ml-10m", write_ml10m(tmp_path / "ml-10m", ratings))
    assert message in str(error.value)


def test_every_release_has_its_checksum_and_scale():
    published = {"ml-10m": "ce571fd55effeba0271552578f2648bd", "ml-20m": "cd245b17a1ae2cc31bb14903e1204af3"}
    published["ml-25m"] = "6b51fb2759a8657d3bfcbfc42b592ada"
    for name, md5 in published.items():
        spec = movielens.DATASETS[name]
        assert spec.md5 == md5 and spec.rating_step == 0.5 and spec.rating_scale == (0.5, 5.0)
    assert movielens.DATASETS["ml-25m"].n_ratings == 25_000_095 and movielens.DATASETS["ml-20m"].n_movies == 27_278
    assert movielens.DATASETS["ml-1m"].rating_step == 1 and "demographics" in movielens.DATASETS["ml-1m"].feature_groups


def test_synthetic_csv_has_ml25m_format_and_shape_and_learnable_ratings(tmp_path):
    from recsys.data.synthetic import generate_synthetic_csv

    folder = generate_synthetic_csv(tmp_path / "syn", 600, 1_000, 60_000, 6, 0.5, seed=3)
    again = generate_synthetic_csv(tmp_path / "again", 600, 1_000, 60_000, 6, 0.5, seed=3)
    assert (folder / "ratings.csv").read_bytes() == (again / "ratings.csv").read_bytes()
    assert not (folder / "users.csv").exists()
    ml = loader.read_movielens("ml-25m", folder)  # the strict CSV parser accepts it
    ratings = ml.ratings
    assert len(ratings) == 60_000 and ratings["user_id"].nunique() == 600
    per_user = ratings.groupby("user_id").size()
    assert per_user.min() >= 20 and per_user.max() > 4 * per_user.median()  # a long tail of heavy raters
    assert per_user.max() <= 600  # no one rates more than 60% of the catalogue (MovieLens's heaviest: about 50-62%)
    assert set(np.unique(ratings["rating"] * 2)) <= set(range(1, 11)) and abs(ratings["rating"].mean() - 3.53) < 0.05
    views = ratings["movie_id"].value_counts()
    assert views.iloc[: len(views) // 100 + 1].sum() > 3 * len(ratings) / 100  # Zipf-like: the top 1% well above 1%
    titles = ml.movies["title"]
    assert titles.str.contains(",").any() and titles.str.contains("é").any()
    assert (ml.movies["genres"] == "(no genres listed)").any() and ml.movies["genres"].str.contains("IMAX").any()
    # learnable: on held-out ratings each movie's mean rating beats the global mean
    held = np.random.default_rng(0).random(len(ratings)) < 0.2
    train, test = ratings[~held], ratings[held]
    movie_mean = train.groupby("movie_id")["rating"].mean().reindex(test["movie_id"]).fillna(train["rating"].mean())
    rmse_movie = np.sqrt(np.mean((movie_mean.to_numpy() - test["rating"].to_numpy()) ** 2))
    rmse_global = np.sqrt(np.mean((train["rating"].mean() - test["rating"].to_numpy()) ** 2))
    assert rmse_movie < 0.97 * rmse_global


def test_synthetic_csv_refuses_impossible_sizes(tmp_path):
    from recsys.data.synthetic import generate_synthetic_csv

    with pytest.raises(DataError, match="20 x n_users"):
        generate_synthetic_csv(tmp_path, 100, 50, 1_000, 4, 0.5, seed=0)
    with pytest.raises(DataError, match=r"<= n_users x 30 \(at most 60% of the catalogue per user\)"):
        generate_synthetic_csv(tmp_path, 100, 50, 3_001, 4, 0.5, seed=0)
