# Generated from hf_sparse_attn/ops/decode_mass/naive.py (hf-sparse-attn 0.1.0, ops 52b9c680fcd2); do not edit.
"""Reference decode block mass (the spec for the Triton kernel).

One query row per (batch row, selection group) scores every cached key; the softmax of those
scores is summed per key block. Keys outside ``key_valid`` (a static or left-padded cache) get no
mass. This is the prefill's pooled indexer mass restricted to the last query row, so a decode step
ranks blocks the way the prefill of the same prompt does.
"""

from __future__ import annotations

import torch

from ..common import check_key_mask


def check_decode_mass_inputs(
    q_idx: torch.Tensor, k_idx: torch.Tensor, key_valid: torch.Tensor | None
) -> None:
    if q_idx.dim() != 4 or k_idx.dim() != 4 or q_idx.shape[2] != 1:
        raise ValueError(
            f"q_idx must be [B, G, 1, d] and k_idx [B, G, L, d], got {tuple(q_idx.shape)} / {tuple(k_idx.shape)}"
        )
    if q_idx.shape[:2] != k_idx.shape[:2] or q_idx.shape[3] != k_idx.shape[3]:
        raise ValueError(f"q_idx {tuple(q_idx.shape)} and k_idx {tuple(k_idx.shape)} disagree on B, G or d")
    if key_valid is not None:
        check_key_mask(key_valid, k_idx.shape[0], k_idx.shape[2], "key_valid")


def decode_block_mass(
    q_idx: torch.Tensor,
    k_idx: torch.Tensor,
    block_size: int,
    scale: float,
    key_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """q_idx [B, G, 1, d], k_idx [B, G, L, d] -> float32 [B, G, ceil(L / block_size)], rows summing to 1."""
    check_decode_mass_inputs(q_idx, k_idx, key_valid)
    L = k_idx.shape[2]
    logits = torch.matmul(q_idx.float(), k_idx.float().transpose(-1, -2))[:, :, 0] * scale
    if key_valid is not None:
        logits = logits.masked_fill(~key_valid[:, None, :], float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    nk = -(-L // block_size)
    probs = torch.nn.functional.pad(probs, (0, nk * block_size - L))
    return probs.view(*probs.shape[:2], nk, block_size).sum(-1)
