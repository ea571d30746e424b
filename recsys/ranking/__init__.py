"""Ranking candidates: the ranker's features, LambdaRank, DCN-v2, the learned stage and the served ranker."""
