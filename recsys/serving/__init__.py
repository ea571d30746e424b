"""Serving: recommend one user, many users or an ad-hoc history, as an online service would."""
