# Generated from hf_sparse_attn/ops/sparse_decode/naive.py (hf-sparse-attn 0.1.0, ops 52b9c680fcd2); do not edit.
"""Reference block-sparse decode attention (the spec for the Triton decode kernel).

One new query token per row attends to the key blocks listed for its selection group over the
whole KV cache: no causal mask is needed (every cached key precedes the query), only the row's
valid cache length ``seq_lens[b]`` masks the tail of a partial last block, and an optional key mask
(a left-padded or static cache) masks keys inside it. Works on gathered keys, so memory is
O(selected keys).
"""

from __future__ import annotations

import torch

from ..common import check_decode, check_key_mask


def sparse_decode_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_num_blocks: torch.Tensor,
    kv_indices: torch.Tensor,
    block_size: int,
    scale: float,
    seq_lens: torch.Tensor | None = None,
    key_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of q [B, Hq, 1, D] over the selected blocks of the cache k/v [B, Hkv, L, D].

    ``key_mask`` [B, L] bool (None = all) marks the keys a row may attend to.

    ``kv_num_blocks`` [B, G] and ``kv_indices`` [B, G, W] list, per selection group, the key blocks
    to read (the first ``kv_num_blocks`` entries, any order, no repeats). Query head h uses group
    ``h // (Hq // G)``. Returns (out [B, Hq, 1, D] in q's dtype, lse [B, Hq, 1] float32); a row with
    no valid selected key gets 0 and lse = -inf.
    """
    B, Hq, L, D = check_decode(q, k, v, kv_num_blocks, kv_indices)
    Hkv, G = k.shape[1], kv_num_blocks.shape[1]
    dev = q.device
    lens = torch.full((B,), L, device=dev) if seq_lens is None else seq_lens.to(dev).long()
    W = kv_indices.shape[-1]
    head_group = torch.arange(Hq, device=dev) // (Hq // G)
    head_kv = torch.arange(Hq, device=dev) // (Hq // Hkv)
    idx = kv_indices.long()[:, head_group]
    count = kv_num_blocks.long()[:, head_group]
    pos = (idx[..., None] * block_size + torch.arange(block_size, device=dev)).flatten(-2)
    slot_ok = (torch.arange(W, device=dev) < count[..., None]).repeat_interleave(block_size, -1)
    keep = slot_ok & (pos < lens[:, None, None])
    b_idx = torch.arange(B, device=dev)[:, None, None]
    pos_c = pos.clamp(max=L - 1)
    if key_mask is not None:
        keep &= check_key_mask(key_mask, B, L).to(dev)[b_idx, pos_c]
    ks = k.float()[b_idx, head_kv[None, :, None], pos_c]
    vs = v.float()[b_idx, head_kv[None, :, None], pos_c]
    scores = torch.einsum("bhd,bhkd->bhk", q[:, :, 0].float(), ks) * scale
    scores = scores.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse[..., None]).nan_to_num_(0.0)
    out = torch.einsum("bhk,bhkd->bhd", probs, vs)
    return out[:, :, None].to(q.dtype), lse[:, :, None]
