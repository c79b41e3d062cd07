"""What every study shares: errors, files, run records, environment, progress, locks, workers."""
