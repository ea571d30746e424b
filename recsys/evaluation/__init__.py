"""Metrics and evaluation protocols: one definition per metric, full-ranking evaluation, fold-in users, intervals."""
