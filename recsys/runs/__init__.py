"""Runs: parameters and their validation, the artifact registry, provenance and the run lock, HTML reports."""
