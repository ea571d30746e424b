"""Ids with a meaning of their own in every top-k list."""

from __future__ import annotations

NO_MOVIE = -1  # fills the slots of a list that an index could not fill (with score -inf)
