# Generated from hf_sparse_attn/ops/pooled_mass/naive.py (hf-sparse-attn 0.1.0, ops 52b9c680fcd2); do not edit.
"""Reference: block-pooled causal attention mass (the spec for the fused Triton kernel).

One routine serves three callers: the distillation teacher and the block oracle (the layer's own
q/k, averaged over the query heads of a group) and the indexer's block scores (its low-dim q/k).
Scores are built one chunk of query blocks at a time, so memory is O(chunk x S), never S x S;
with autograd (indexer training) each chunk is recomputed in backward instead of stored.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from ..common import check_groups, check_qk, num_blocks, sequence_lengths

CHUNK_ELEMENTS = 1 << 25
MASKED = -1e30


def pooled_attention_mass(
    q: torch.Tensor,
    k: torch.Tensor,
    block_size: int,
    scale: float,
    groups: int,
    seq_lens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean causal softmax mass each query block puts on each key block.

    q [B, H, S, d], k [B, Hk, S, d] (right-padded; ``seq_lens`` [B] valid lengths, None = all S).
    Query head h belongs to group ``h // (H // groups)``. Returns float32 [B, groups, nQ, nK]: for
    every valid query the softmax over its causal keys is summed per key block, averaged over the
    heads of the group and over the valid queries of the block (rows of empty blocks are 0).
    """
    B, H, S, d = check_qk(q, k)
    check_groups(H, groups)
    nb = num_blocks(S, block_size)
    lens = sequence_lengths(seq_lens, B, S, q.device)
    chunk = max(1, CHUNK_ELEMENTS // max(1, B * H * block_size * S))
    differentiable = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad)
    rows = []
    for qb0 in range(0, nb, chunk):
        args = (q, k, lens, qb0, min(nb, qb0 + chunk), block_size, scale, groups)
        part = checkpoint(_chunk_mass, *args, use_reentrant=False) if differentiable else _chunk_mass(*args)
        rows.append(torch.nn.functional.pad(part, (0, nb - part.shape[-1])))
    return torch.cat(rows, dim=2)


def _chunk_mass(q, k, lens, qb0: int, qb1: int, block_size: int, scale: float, groups: int) -> torch.Tensor:
    """Rows ``qb0:qb1`` of the pooled mass, over key blocks ``0:qb1`` (causal)."""
    B, H, S, d = q.shape
    Hk = k.shape[1]
    s0, s1 = qb0 * block_size, min(S, qb1 * block_size)
    kb1 = num_blocks(s1, block_size)
    k_pad = torch.nn.functional.pad(k[:, :, :s1].float(), (0, 0, 0, kb1 * block_size - s1))
    qc = q[:, :, s0:s1].float().view(B, Hk, H // Hk, s1 - s0, d)
    scores = torch.einsum("bgrqd,bgkd->bgrqk", qc, k_pad) * scale
    qpos = torch.arange(s0, s1, device=q.device)
    kpos = torch.arange(kb1 * block_size, device=q.device)
    keep = (kpos[None, :] <= qpos[:, None])[None] & (kpos[None, None, :] < lens[:, None, None])
    # A finite fill keeps fully masked blocks NaN-free in logsumexp's backward; their mass is exp(-1e30) = 0.
    scores = scores.masked_fill(~keep[:, None, None], MASKED).view(B, H, s1 - s0, kb1, block_size)
    block_lse = torch.logsumexp(scores, dim=-1)
    mass = torch.exp(block_lse - torch.logsumexp(block_lse, dim=-1, keepdim=True))
    mass = mass.view(B, groups, H // groups, s1 - s0, kb1).mean(2)
    qvalid = (qpos[None, :] < lens[:, None]).float()
    mass = mass * qvalid[:, None, :, None]
    nq = qb1 - qb0
    pad_q = nq * block_size - (s1 - s0)
    mass = torch.nn.functional.pad(mass, (0, 0, 0, pad_q)).view(B, groups, nq, block_size, kb1).sum(3)
    count = torch.nn.functional.pad(qvalid, (0, pad_q)).view(B, nq, block_size).sum(-1)
    return mass / count.clamp(min=1)[:, None, :, None]
