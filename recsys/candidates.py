"""What a candidate list is made of: where each movie came from, and the id that pads a short list."""

from __future__ import annotations

NO_MOVIE = -1  # fills the slots of a list that an index could not fill (with score -inf)

# The source of each served or candidate movie, shown beside it in lists and reports.
SOURCE_RETRIEVAL = "retrieval"
SOURCE_LEAST_VIEWED = "least-viewed"
SOURCE_POPULAR = "popular (unknown user)"
