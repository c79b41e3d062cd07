"""Training runs: the recipe, the loop, run records, workers, progress, locks."""
