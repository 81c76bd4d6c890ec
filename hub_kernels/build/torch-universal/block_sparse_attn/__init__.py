# Generated from hf_sparse_attn/ops/block_sparse_attn/__init__.py (hf-sparse-attn 0.1.0, ops 52b9c680fcd2); do not edit.
