"""Exploration: re-ranking for reach (weighted sampling, noise, least-viewed) and the closed-loop simulation."""
