# Generated from hf_sparse_attn/ops/pooled_mass/__init__.py (hf-sparse-attn 0.1.0, ops 186452b61254); do not edit.
