# Generated from hf_sparse_attn/ops/probe_mass/__init__.py (hf-sparse-attn 0.1.0, ops 77ccaa8bdc6a); do not edit.
