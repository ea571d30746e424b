"""Candidate retrieval: indexes (BruteForce, ScaNN), retrievers, history queries, merged candidate sources."""
