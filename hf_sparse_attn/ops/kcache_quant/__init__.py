"""Microscaled 4-bit storage for the indexer K-cache (INT4 and FP4 E2M1 codes, power-of-two scales)."""
