"""Reports: pure functions from run records to summaries, tables, plots, findings."""
