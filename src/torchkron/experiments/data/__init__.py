"""Data sets: locating, validating, loading and downloading them."""
