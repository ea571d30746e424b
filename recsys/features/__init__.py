"""Features built from the parsed tables: splits, sequences, model inputs, the feature store, a request's context."""
