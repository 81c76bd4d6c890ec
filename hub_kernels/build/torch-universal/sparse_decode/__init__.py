# Generated from hf_sparse_attn/ops/sparse_decode/__init__.py (hf-sparse-attn 0.1.0, ops b6f37a807d1a); do not edit.
