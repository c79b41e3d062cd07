"""LM experiment package."""
