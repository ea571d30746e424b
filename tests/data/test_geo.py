"""ZIP cleaning and the two city/state backends (uszipcode against a small database built here)."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest

from recsys.data.geo import GEO_BACKENDS, GeoError, lookup_city_state, standardize_zip


def test_standardize_zip_keeps_only_us_zips():
    raw = pd.Series(
        ["55117", "98107-2117", "T8N5H", " 02139 ", "1234", "193122042", "9810-2117", "", None, "00000"],
        index=[10, 11, 12, 13, 14, 15, 16, 17, 18, 19],
    )
    zip5 = standardize_zip(raw)
    assert zip5.index.equals(raw.index)
    expected = ["55117", "98107", None, "02139", None, None, None, None, None, "00000"]
    assert [None if pd.isna(value) else value for value in zip5] == expected


def test_standardize_zip_keeps_leading_zeros_as_strings():
    zip5 = standardize_zip(pd.Series(["02139", "00501-1234"]))
    assert zip5.tolist() == ["02139", "00501"]
    assert pd.api.types.is_string_dtype(zip5)


def test_zipcodes_backend_resolves_and_aligns_with_index():
    zip5 = pd.Series(["98107", None, "02139", "98107", "99999"], index=["a", "b", "c", "d", "e"])
    location = lookup_city_state(zip5)
    assert list(location.columns) == ["city", "state"]
    assert location.index.equals(zip5.index)
    assert location.loc["a"].tolist() == ["Seattle", "WA"]
    assert location.loc["d"].tolist() == ["Seattle", "WA"]
    assert location.loc["c"].tolist() == ["Cambridge", "MA"]
    assert location.loc[["b", "e"]].isna().all().all()


def test_zipcodes_backend_handles_empty_input():
    location = lookup_city_state(pd.Series([], dtype="str"))
    assert location.empty and list(location.columns) == ["city", "state"]


def test_unknown_backend_lists_the_valid_ones():
    with pytest.raises(GeoError, match="geo.backend") as err:
        lookup_city_state(pd.Series(["98107"]), backend="geonames")
    assert all(name in str(err.value) for name in GEO_BACKENDS)


@pytest.fixture()
def uszipcode_db(tmp_path):
    """A uszipcode simple database with three ZIPs, built from uszipcode's own SQLAlchemy model."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fuzzywuzzy, imported by uszipcode, warns on import
        model = pytest.importorskip("uszipcode.model")
    import sqlalchemy as sa
    import sqlalchemy.orm as orm

    path = tmp_path / "simple_db.sqlite"
    engine = sa.create_engine(f"sqlite:///{path}")
    model.SimpleZipcode.metadata.create_all(engine, tables=[model.SimpleZipcode.__table__])
    with orm.Session(engine) as session:
        session.add_all(
            [
                model.SimpleZipcode(zipcode="98107", major_city="Seattle", state="WA"),
                model.SimpleZipcode(zipcode="02139", major_city="Cambridge", state="MA"),
                model.SimpleZipcode(zipcode="55117", major_city="Saint Paul", state="MN"),
            ]
        )
        session.commit()
    engine.dispose()
    return str(path)


def test_uszipcode_backend_resolves_from_its_database(uszipcode_db):
    zip5 = standardize_zip(pd.Series(["98107-2117", "T8N5H", "02139", "10001", "98107"], index=[5, 4, 3, 2, 1]))
    location = lookup_city_state(zip5, backend="uszipcode", uszipcode_db=uszipcode_db)
    assert location.index.equals(zip5.index)
    assert location.loc[5].tolist() == ["Seattle", "WA"]
    assert location.loc[1].tolist() == ["Seattle", "WA"]
    assert location.loc[3].tolist() == ["Cambridge", "MA"]
    assert location.loc[[4, 2]].isna().all().all()  # not a ZIP; not in this small database


def test_uszipcode_backend_queries_in_chunks(uszipcode_db):
    # More unique ZIPs than one IN query takes: the chunks must add up.
    many = pd.Series([f"{n:05d}" for n in range(2_000)] + ["55117"])
    location = lookup_city_state(many, backend="uszipcode", uszipcode_db=uszipcode_db)
    assert location["state"].notna().sum() == 1
    assert location["city"].iloc[-1] == "Saint Paul"


def test_uszipcode_missing_database_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "simple_db.sqlite"
    with pytest.raises(GeoError, match="geo.uszipcode_db") as err:
        lookup_city_state(pd.Series(["98107"]), backend="uszipcode", uszipcode_db=str(missing))
    assert str(missing) in str(err.value)


def test_uszipcode_file_that_is_not_its_database_is_reported(tmp_path):
    not_a_db = tmp_path / "simple_db.sqlite"
    not_a_db.write_text("not sqlite")
    with pytest.raises(GeoError, match="not a usable uszipcode"):
        lookup_city_state(pd.Series(["98107"]), backend="uszipcode", uszipcode_db=str(not_a_db))
