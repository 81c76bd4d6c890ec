# Generated from hf_sparse_attn/ops/decode_mass/__init__.py (hf-sparse-attn 0.1.0, ops b820be5d0e1e); do not edit.
"""Indexer softmax mass of one decode query row, pooled per key block (the sparse-decode block score)."""
