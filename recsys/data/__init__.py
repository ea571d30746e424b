"""MovieLens releases: download and verify, parse strictly, generate synthetic data in their formats; geography."""
