"""Reference: block-pooled causal attention mass (the spec for the fused Triton kernel).

One routine serves three callers: the distillation teacher and the block oracle (the layer's own
q/k, averaged over the query heads of a group) and the indexer's block scores (its low-dim q/k).
Scores are built one chunk of query blocks at a time, so memory is O(chunk x S), never S x S.
"""

from __future__ import annotations

import math

import torch

from ..common import check_qk, num_blocks

CHUNK_ELEMENTS = 1 << 25


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
    Hk = k.shape[1]
    if H % groups:
        raise ValueError(f"query heads ({H}) must be a multiple of the selection groups ({groups})")
    nb = num_blocks(S, block_size)
    lens = _lens(seq_lens, B, S, q.device)
    out = torch.zeros(B, groups, nb, nb, dtype=torch.float32, device=q.device)
    rep = H // Hk
    kf = k.float()
    chunk = max(1, CHUNK_ELEMENTS // max(1, B * H * block_size * S))
    for qb0 in range(0, nb, chunk):
        qb1 = min(nb, qb0 + chunk)
        s0, s1 = qb0 * block_size, min(S, qb1 * block_size)
        qc = q[:, :, s0:s1].float().view(B, Hk, rep, s1 - s0, d)
        scores = torch.einsum("bgrqd,bgkd->bgrqk", qc, kf[:, :, :s1]) * scale
        qpos = torch.arange(s0, s1, device=q.device)
        kpos = torch.arange(s1, device=q.device)
        keep = (kpos[None, :] <= qpos[:, None])[None] & (kpos[None, None, :] < lens[:, None, None])
        scores = scores.masked_fill(~keep[:, None, None], float("-inf"))
        probs = torch.softmax(scores, dim=-1).nan_to_num_(0.0)
        kb1 = num_blocks(s1, block_size)
        probs = torch.nn.functional.pad(probs, (0, kb1 * block_size - s1))
        mass = probs.view(B, H, s1 - s0, kb1, block_size).sum(-1)
        mass = mass.view(B, groups, H // groups, s1 - s0, kb1).mean(2)
        qvalid = (qpos[None, :] < lens[:, None]).float()
        mass = mass * qvalid[:, None, :, None]
        nq = qb1 - qb0
        pad_q = nq * block_size - (s1 - s0)
        mass = torch.nn.functional.pad(mass, (0, 0, 0, pad_q)).view(B, groups, nq, block_size, kb1).sum(3)
        count = torch.nn.functional.pad(qvalid, (0, pad_q)).view(B, nq, block_size).sum(-1)
        out[:, :, qb0:qb1, :kb1] = mass / count.clamp(min=1)[:, None, :, None]
    return out


def _lens(seq_lens: torch.Tensor | None, B: int, S: int, device: torch.device) -> torch.Tensor:
    if seq_lens is None:
        return torch.full((B,), S, dtype=torch.long, device=device)
    return seq_lens.to(device=device, dtype=torch.long)


def default_scale(d: int) -> float:
    return 1.0 / math.sqrt(d)
