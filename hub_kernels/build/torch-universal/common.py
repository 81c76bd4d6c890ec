# Generated from hf_sparse_attn/ops/common.py (hf-sparse-attn 0.1.0, ops 8ff2130f5477); do not edit.
"""Shape checks and block arithmetic shared by every op."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def num_blocks(length: int, block_size: int) -> int:
    return (length + block_size - 1) // block_size


def check_qk(q: torch.Tensor, k: torch.Tensor) -> tuple[int, int, int, int]:
    """Validate q [B, H, S, d] / k [B, Hk, S, d] and return (B, H, S, d)."""
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(
            f"q and k must be 4D [batch, heads, seq, dim], got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    for name, t in (("q", q), ("k", k)):
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    B, H, S, d = q.shape
    if k.shape[0] != B or k.shape[2] != S or k.shape[3] != d:
        raise ValueError(
            f"k {tuple(k.shape)} does not match q {tuple(q.shape)} in batch, sequence or head dim"
        )
    if H % k.shape[1]:
        raise ValueError(f"query heads ({H}) must be a multiple of key heads ({k.shape[1]})")
    return B, H, S, d
