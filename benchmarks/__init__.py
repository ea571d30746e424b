"""Speed, memory and scale measurements: scripts, and the `ann` package (`python -m benchmarks.ann`)."""
