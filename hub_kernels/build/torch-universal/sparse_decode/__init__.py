# Generated from hf_sparse_attn/ops/sparse_decode/__init__.py (hf-sparse-attn 0.1.0, ops b820be5d0e1e); do not edit.
