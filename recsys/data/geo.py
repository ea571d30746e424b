"""US ZIP code cleaning and ZIP -> city/state lookup for user features, from offline ZIP databases."""

from __future__ import annotations

import functools
import os
import warnings

import pandas as pd

GEO_BACKENDS = ("zipcodes", "uszipcode")

# SQLite allows 32,766 bound parameters since 3.32 but only 999 before; stay under the old limit.
_SQL_CHUNK = 900


class GeoError(ValueError):
    """A geo backend that cannot be used; the message names the setting (geo.backend, geo.uszipcode_db) to fix."""


def standardize_zip(zip_codes: pd.Series) -> pd.Series:
    """Reduce raw ZIP codes to 5-digit US ZIP strings.

    MovieLens zip codes are typed in by users: ZIP+4 ("98107-2117"), Canadian postal codes
    ("T8N5H"), stray digits ("495321"). Only the 5-digit ZIP can be looked up, so everything is
    reduced to it or marked missing. A 9-digit run without the hyphen is treated as not a ZIP,
    since it cannot be told apart from a typo.

    Args:
        zip_codes: raw zip codes (strings; missing values allowed).

    Returns:
        A str Series with the same index: a 5-digit ZIP, or missing where the value is not a US ZIP.
    """
    raw = zip_codes.astype("str").str.strip()
    zip5 = raw.str.extract(r"^(\d{5})(?:-\d{4})?$", expand=False)
    return zip5.astype("str").rename(zip_codes.name)


def lookup_city_state(zip5: pd.Series, backend: str = "zipcodes", uszipcode_db: str | None = None) -> pd.DataFrame:
    """Resolve 5-digit ZIPs to the city and two-letter state of their post office.

    Only the unique ZIPs are looked up (a few thousand for ML-1M's 6,040 users), then mapped back.

    Args:
        zip5: 5-digit ZIP strings as returned by `standardize_zip` (missing values allowed).
        backend: "zipcodes" (the database bundled with the `zipcodes` package, offline) or
            "uszipcode" (uszipcode's SQLite database).
        uszipcode_db: path to uszipcode's simple_db.sqlite; None lets uszipcode download it to
            ~/.uszipcode on first use (needs internet). Only used by the uszipcode backend.

    Returns:
        A DataFrame with columns city and state (str), aligned to zip5's index; missing where the
        ZIP is missing or not in the backend's database.

    Raises:
        GeoError: unknown backend, backend package not installed, or uszipcode_db not a usable file.
    """
    if backend not in GEO_BACKENDS:
        raise GeoError(f"geo.backend must be one of {GEO_BACKENDS}, got {backend!r}")
    unique_zips = pd.Series(zip5.dropna().unique(), dtype="str")
    if backend == "zipcodes":
        table = _zipcodes_table()
    else:
        table = _uszipcode_table(unique_zips.tolist(), uszipcode_db)
    resolved = table.reindex(pd.Index(zip5.astype("str"), dtype="str"))
    resolved.index = zip5.index
    return resolved[["city", "state"]].astype("str")


@functools.lru_cache(maxsize=1)
def _zipcodes_table() -> pd.DataFrame:
    """The `zipcodes` package's whole bundled list as a frame indexed by ZIP (built once, ~0.5 s).

    `zipcodes.matching` scans all ~42k entries per call, so one lookup per ZIP would be slow;
    the list is loaded once and joined instead. Inactive (retired) ZIPs are kept: MovieLens
    users typed their ZIP around 2000, and many ZIPs retired since then still name their city.
    """
    try:
        import zipcodes
    except ImportError:
        raise GeoError("geo.backend 'zipcodes' needs the zipcodes package: pip install zipcodes") from None
    entries = zipcodes.list_all()
    table = pd.DataFrame(
        {
            "city": [entry["city"] for entry in entries],
            "state": [entry["state"] for entry in entries],
        },
        index=pd.Index([entry["zip_code"] for entry in entries], dtype="str", name="zip5"),
        dtype="str",
    )
    return table[~table.index.duplicated()]


def _uszipcode_table(zips: list[str], db_path: str | None) -> pd.DataFrame:
    """City and state of `zips` from uszipcode's database, in chunked `IN` queries (not one query per ZIP)."""
    if db_path is not None and not os.path.isfile(db_path):
        raise GeoError(
            f"geo.uszipcode_db {db_path!r} does not exist: point it at uszipcode's simple_db.sqlite, "
            "or set it to null to let uszipcode download the database (needs internet)"
        )
    try:
        with warnings.catch_warnings():
            # fuzzywuzzy (imported by uszipcode) warns about its pure-python matcher; unused here.
            warnings.simplefilter("ignore")
            from uszipcode import SearchEngine, SimpleZipcode
    except ImportError as err:
        raise GeoError(
            f"geo.backend 'uszipcode' needs the uszipcode package ({err}): pip install uszipcode, "
            "or use geo.backend: zipcodes"
        ) from None
    import sqlalchemy.exc

    engine = SearchEngine(
        simple_or_comprehensive=SearchEngine.SimpleOrComprehensiveArgEnum.simple,
        db_file_path=db_path,
    )
    rows: list[tuple] = []
    try:
        for start in range(0, len(zips), _SQL_CHUNK):
            chunk = zips[start : start + _SQL_CHUNK]
            query = engine.ses.query(SimpleZipcode.zipcode, SimpleZipcode.major_city, SimpleZipcode.state).filter(
                SimpleZipcode.zipcode.in_(chunk)
            )
            rows.extend(query.all())
    except sqlalchemy.exc.DatabaseError as err:
        raise GeoError(
            f"geo.uszipcode_db {engine.db_file_path!s} is not a usable uszipcode simple database "
            f"({err.orig}); point it at uszipcode's simple_db.sqlite"
        ) from None
    finally:
        engine.close()
        engine.engine.dispose()  # release the SQLite file (the pool would keep it open)
    table = pd.DataFrame(rows, columns=["zip5", "city", "state"], dtype="str")
    return table.drop_duplicates("zip5").set_index("zip5")
