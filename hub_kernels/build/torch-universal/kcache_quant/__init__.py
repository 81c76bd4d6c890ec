# Generated from hf_sparse_attn/ops/kcache_quant/__init__.py (hf-sparse-attn 0.1.0, ops 52b9c680fcd2); do not edit.
"""Microscaled 4-bit storage for the indexer K-cache (INT4 and FP4 E2M1 codes, power-of-two scales)."""
