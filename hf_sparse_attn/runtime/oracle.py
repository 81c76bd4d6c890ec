"""Attention-mass oracle (Oracle-Guided Sparse Prefill): what the dense attention itself would select.

Block granularity (``oracle_block_scores``) is a selection source in the attention path
(``selector="oracle"``) and the distillation teacher. Token granularity (``token_oracle_attention``)
is a diagnostic: per query, the head-averaged token support reaching the budget, attention
recomputed on that support only. It separates "is this budget feasible" from indexer error.
"""

from __future__ import annotations

import torch

from .. import ops
from ..ops.common import check_qk

TOKEN_CHUNK_ELEMENTS = 1 << 24


def oracle_block_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    block_size: int,
    scale: float,
    groups: int,
    seq_lens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dense attention mass per (query block, key block), averaged over the query heads of each group."""
    return ops.pooled_attention_mass(q, k, block_size, scale, groups, seq_lens)


@torch.no_grad()
def token_oracle_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    top_k: int | None = None,
    top_p: float | None = None,
    groups: int = 1,
    density: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention restricted to each query's head-averaged top-k / top-p / density token support.

    Support is shared by the query heads of a group (``groups`` = 1: all heads). Returns
    (out [B, Hq, S, D], kept fraction of causal keys per query [B, groups, S]). Works in query chunks;
    the support itself is token-level, so this is a diagnostic for moderate lengths.
    """
    if sum(x is not None for x in (top_k, top_p, density)) != 1:
        raise ValueError(
            "give exactly one of top_k (tokens per query), top_p (mass per query) or density "
            "(fraction of each query's causal keys)"
        )
    B, H, S, D = check_qk(q, k)
    Hk = k.shape[1]
    if H % groups:
        raise ValueError(f"query heads ({H}) must be a multiple of groups ({groups})")
    rep = H // Hk
    out = torch.empty(B, H, S, D, dtype=q.dtype, device=q.device)
    kept = torch.empty(B, groups, S, dtype=torch.float32, device=q.device)
    chunk = max(1, TOKEN_CHUNK_ELEMENTS // max(1, B * H * S))
    kf, vf = k.float(), v.float()
    for s0 in range(0, S, chunk):
        s1 = min(S, s0 + chunk)
        qpos = torch.arange(s0, s1, device=q.device)
        causal = torch.arange(s1, device=q.device)[None, :] <= qpos[:, None]
        logits = torch.einsum(
            "bgrqd,bgkd->bgrqk", q[:, :, s0:s1].float().view(B, Hk, rep, s1 - s0, D), kf[:, :, :s1]
        )
        logits = (logits * scale).masked_fill(~causal, float("-inf")).view(B, H, s1 - s0, s1)
        probs = torch.softmax(logits, dim=-1)
        group_probs = probs.view(B, groups, H // groups, s1 - s0, s1).mean(2)
        support = _support(group_probs, causal, top_k, top_p, density)
        kept[:, :, s0:s1] = support.sum(-1).float() / causal.sum(-1).float()
        head_support = support.repeat_interleave(H // groups, dim=1)
        masked = logits.masked_fill(~head_support, float("-inf"))
        attn = torch.softmax(masked, dim=-1).view(B, Hk, rep, s1 - s0, s1)
        out[:, :, s0:s1] = (
            torch.einsum("bgrqk,bgkd->bgrqd", attn, vf[:, :, :s1]).reshape(B, H, s1 - s0, D).to(q.dtype)
        )
    return out, kept


def _support(
    probs: torch.Tensor,
    causal: torch.Tensor,
    top_k: int | None,
    top_p: float | None,
    density: float | None,
) -> torch.Tensor:
    order = torch.sort(probs, dim=-1, descending=True, stable=True)
    if top_k is not None:
        count = torch.full(probs.shape[:-1], top_k, device=probs.device)
    elif density is not None:
        count = torch.ceil(density * causal.sum(-1).float()).long().expand(probs.shape[:-1])
    else:
        before = torch.cumsum(order.values, dim=-1) - order.values
        count = (before < top_p - 1e-6).sum(-1)
    count = torch.minimum(count.clamp(min=1), causal.sum(-1))
    keep_sorted = torch.arange(probs.shape[-1], device=probs.device) < count[..., None]
    return torch.zeros_like(keep_sorted).scatter_(-1, order.indices, keep_sorted)
