"""Kernel entry points: the Triton kernel on CUDA when one exists for the op, the reference elsewhere."""

from .block_sparse_attn.naive import block_sparse_attention
from .pooled_mass.naive import pooled_attention_mass

__all__ = ["block_sparse_attention", "pooled_attention_mass"]
