# Generated from hf_sparse_attn/ops/pooled_mass/__init__.py (hf-sparse-attn 0.1.0, ops 76c45ff90575); do not edit.
