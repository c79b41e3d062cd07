"""The models the experiments train, built from named variants."""
