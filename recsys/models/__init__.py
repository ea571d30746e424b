"""The models: towers, the two-tower rating and retrieval models, the sequential retriever, EASE, baselines, configs."""
