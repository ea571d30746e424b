"""Fitting the models: callbacks, the choose-on-val / refit / test-once protocol, trainers, several workers."""
