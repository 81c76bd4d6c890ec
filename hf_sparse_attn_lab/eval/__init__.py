"""Synthetic long-context evaluation (RULER-style tasks generated offline from a seed)."""
