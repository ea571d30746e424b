"""The indexes the ANN benchmark compares, one module each; a library is imported only when its index is built."""
