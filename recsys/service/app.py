"""The HTTP service over one finished run (FastAPI): typed requests and answers, 4xx errors that name the field.

FastAPI was chosen for its typed request/response models (pydantic), which give both the input
checks and the OpenAPI schema (`/openapi.json`, `/docs`) from one declaration, and for its test
client; Uvicorn serves it. Every bad input is answered with a 4xx whose body says which field was
wrong, what it held and what is valid, before any model runs:

    {"error": "...", "field": "k", "valid": "an integer from 1 to 100", "got": 500}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from fastapi import FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field

from recsys.core.errors import UnknownMovieError
from recsys.service.served_run import MAX_HISTORY, MAX_K, ServedRun

PAGE = Path(__file__).resolve().parent / "static" / "index.html"
MAX_SEARCH = 50


class Movie(BaseModel):
    movie_id: int
    title: str
    year: int | None
    genres: list[str]


class Recommendation(Movie):
    rank: int
    score: float | None = Field(description="what ordered the list (the served ranker's score; null for popular)")
    retrieval_score: float | None
    source: str = Field(description="two-tower, sequential, EASE, joint model, a mix of them, popular, or least-viewed")
    source_detail: str = Field(description="the recommender's own label of the source")


class RecommendationList(BaseModel):
    user_id: int | None = None
    history: list[int] | None = None
    k: int
    served_by: str = Field(description="the retriever and ranker (or the history model) that produced the list")
    items: list[Recommendation]


class HistoryRequest(BaseModel):
    movie_ids: list[int] = Field(description=f"movies the person liked, oldest first: 1 to {MAX_HISTORY} distinct ids")
    k: int = Field(10, description=f"list length, 1 to {MAX_K}")


class RatedMovie(Movie):
    rating: float


class UserHistory(BaseModel):
    user_id: int
    items: list[RatedMovie]


class Health(BaseModel):
    status: str
    run: str
    params_hash: str | None
    git_commit: str | None
    served_retriever: str
    served_ranker: str
    history_model: str
    models_loaded: list[str]
    n_users: int
    n_movies: int
    example_user_ids: list[int]


class ApiError(Exception):
    """A request the service refuses: the status, and which field was wrong, with what, and what is valid."""

    def __init__(self, status: int, error: str, field: str, valid: str, got: Any = None):
        super().__init__(error)
        self.status, self.body = status, {"error": error, "field": field, "valid": valid, "got": got}


def _records(table: pd.DataFrame) -> list[dict]:
    """Rows of a result table as JSON-ready dicts: genres as a list, missing numbers as null."""
    rows = []
    for row in table.to_dict("records"):
        row["genres"] = [g for g in str(row["genres"]).split("|") if g]
        for key, value in row.items():
            if value is pd.NA or (isinstance(value, float) and not np.isfinite(value)):
                row[key] = None
            elif isinstance(value, np.generic):
                row[key] = value.item()
        rows.append(row)
    return rows


def _check_k(k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise ApiError(422, f"k={k} is out of range", "k", f"an integer from 1 to {MAX_K}", k)


def _field_of(loc: tuple) -> str:
    """'k', 'movie_ids.1' or 'body' from pydantic's error location (its first part says where: body, query, path)."""
    parts = [str(p) for p in (loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)]
    return ".".join(parts) or "body"


def create_app(served: ServedRun) -> FastAPI:
    """The service's routes over one loaded run."""
    app = FastAPI(
        title="recsys-notebooks: a finished run, served",
        description=f"Lists of run {served.name!r}: a user's served list, a list for an ad-hoc history, movie search.",
        version="1",
    )
    ranker = served.recommend_args["ranker"].name
    retriever = "two-tower" if served.served_retriever == "two_tower" else "sequential"
    history_model = "sequential" if served.history_args is not None else "EASE"

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(status_code=error.status, content=jsonable_encoder(error.body))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        if first.get("type") == "json_invalid":
            return JSONResponse(
                status_code=400,
                content={
                    "error": "the body is not valid JSON",
                    "field": "body",
                    "valid": 'e.g. {"movie_ids": [1, 2], "k": 10}',
                    "got": None,
                },
            )
        field = _field_of(tuple(first.get("loc", ())))
        expected = {
            "int_parsing": "an integer",
            "int_type": "an integer",
            "list_type": "a list of integers",
            "missing": "required",
        }
        valid = expected.get(first.get("type"), first.get("msg", "see /docs"))
        got = first.get("input")
        got = got if isinstance(got, (int, float, str, type(None))) else json.dumps(jsonable_encoder(got))[:200]
        return JSONResponse(
            status_code=422,
            content={"error": f"{field}: {first.get('msg')}", "field": field, "valid": valid, "got": got},
        )

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(PAGE, media_type="text/html")

    @app.get("/health", response_model=Health)
    def health() -> Health:
        users = served.user_ids()
        return Health(
            status="ok",
            run=served.name,
            params_hash=served.params_hash,
            git_commit=served.git_commit,
            served_retriever=retriever,
            served_ranker=ranker,
            history_model=history_model,
            models_loaded=served.loaded,
            n_users=len(users),
            n_movies=len(served.store.movies),
            example_user_ids=[int(u) for u in users[:20]],
        )

    # The two list endpoints answer with the rows ServedRun built (RecommendationList documents them): the
    # model call dominates, and a second validation of rows built by the code itself would only add latency.
    # They run on the event loop: ServedRun computes one list at a time anyway.
    @app.get("/recommend", response_model=RecommendationList)
    async def recommend(
        user_id: int = Query(description="a user of the run"),
        k: int = Query(10, description=f"list length, 1 to {MAX_K}"),
    ) -> JSONResponse:
        _check_k(k)
        if not served.knows_user(user_id):
            raise ApiError(404, f"unknown user {user_id}", "user_id", "a user id of the run (see /health)", user_id)
        items = served.recommend(user_id, k)
        served_by = f"{retriever} retrieval, {ranker} ranker"
        return JSONResponse({"user_id": user_id, "history": None, "k": k, "served_by": served_by, "items": items})

    @app.post("/recommend/history", response_model=RecommendationList)
    async def recommend_for_history(body: HistoryRequest) -> JSONResponse:
        _check_k(body.k)
        ids = body.movie_ids
        if not 1 <= len(ids) <= MAX_HISTORY:
            raise ApiError(
                422, f"{len(ids)} movie ids given", "movie_ids", f"1 to {MAX_HISTORY} distinct movie ids", len(ids)
            )
        repeated = sorted({m for m in ids if ids.count(m) > 1}) if len(set(ids)) < len(ids) else []
        if repeated:
            raise ApiError(422, f"repeated movie ids {repeated}", "movie_ids", "each movie id once", repeated)
        try:
            served.check_movies(ids)
        except UnknownMovieError as error:
            raise ApiError(
                422, str(error), "movie_ids", "movie ids of the run's catalogue (see /movies)", error.movie_ids
            ) from None
        items = served.recommend_for_history(ids, body.k)
        served_by = f"{history_model} (history)"
        return JSONResponse({"user_id": None, "history": ids, "k": body.k, "served_by": served_by, "items": items})

    @app.get("/movies", response_model=list[Movie])
    def movies(
        query: str = Query(min_length=1, max_length=100, description="part of a title, case-insensitive"),
        limit: int = Query(20, description=f"at most this many, 1 to {MAX_SEARCH}"),
    ) -> list[Movie]:
        if not 1 <= limit <= MAX_SEARCH:
            raise ApiError(422, f"limit={limit} is out of range", "limit", f"an integer from 1 to {MAX_SEARCH}", limit)
        return [Movie(**row) for row in _records(served.search_movies(query, limit))]

    @app.get("/users/{user_id}/history", response_model=UserHistory)
    def user_history(user_id: int, limit: int = Query(20, description="at most this many, 1 to 200")) -> UserHistory:
        if not 1 <= limit <= 200:
            raise ApiError(422, f"limit={limit} is out of range", "limit", "an integer from 1 to 200", limit)
        if not served.knows_user(user_id):
            raise ApiError(404, f"unknown user {user_id}", "user_id", "a user id of the run (see /health)", user_id)
        return UserHistory(
            user_id=user_id, items=[RatedMovie(**row) for row in _records(served.history(user_id, limit))]
        )

    return app
