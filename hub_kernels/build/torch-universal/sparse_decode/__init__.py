# Generated from hf_sparse_attn/ops/sparse_decode/__init__.py (hf-sparse-attn 0.1.0, ops 7f9db73049a6); do not edit.
