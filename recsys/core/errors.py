"""Errors a caller can act on that more than one layer raises: a user or movie the run does not know."""

from __future__ import annotations

from collections.abc import Callable, Iterable


class UnknownUserError(KeyError):
    """A user the feature store (or a retriever) cannot serve: not in the run's users table, or no query for them."""

    def __str__(self) -> str:  # KeyError would show the message repr'd, in quotes
        return self.args[0]


class UnknownMovieError(KeyError):
    """A movie id that the feature store does not hold (not in the run's movies table)."""

    def __init__(self, movie_ids: Iterable[int]):
        self.movie_ids = [int(m) for m in movie_ids]
        shown = self.movie_ids[:10]
        more = f" and {len(self.movie_ids) - 10} more" if len(self.movie_ids) > 10 else ""
        super().__init__(
            f"unknown movie id(s) {shown}{more}: not in the feature store's catalogue "
            "(build the store from the same run's movies table as the retrieval index)"
        )

    def __str__(self) -> str:  # KeyError would show the message repr'd, in quotes
        return self.args[0]


def raised(action: Callable[[], object], error: type[Exception]) -> str:
    """The error `action` raises, as "<ErrorName>: <message>", for a report that shows what a caller is told.

    Raises:
        AssertionError: `action` raised nothing (the report would show an error that did not happen).
        Exception: an error other than `error` is not caught.
    """
    try:
        action()
    except error as caught:
        return f"{type(caught).__name__}: {caught}"
    raise AssertionError(f"expected {error.__name__}, but nothing was raised")
