"""Pieces every layer uses: atomic writes, errors, seeding, column checks, the C++ log filter. No TensorFlow."""
