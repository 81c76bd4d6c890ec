# Generated from hf_sparse_attn/ops/probe_mass/__init__.py (hf-sparse-attn 0.1.0, ops 0b4590749812); do not edit.
