"""Reference block-sparse causal GQA attention (the spec for the Triton kernel).

Each query block attends to the key blocks listed for its selection group, with token-level causal
masking and right padding (keys at or beyond ``seq_lens[b]`` are never attended). Works one query
block at a time on gathered keys, so memory is O(selected keys), never S x S.
"""

from __future__ import annotations

import torch

from ..common import check_qk, num_blocks, sequence_lengths


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_num_blocks: torch.Tensor,
    kv_indices: torch.Tensor,
    block_size: int,
    scale: float,
    seq_lens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of q [B, Hq, S, D] over the selected blocks of k/v [B, Hkv, S, D].

    ``kv_num_blocks`` [B, G, nQ] and ``kv_indices`` [B, G, nQ, W] list, per selection group, the key
    blocks each query block attends to (only the first ``kv_num_blocks`` entries are read). Query head
    h uses group ``h // (Hq // G)``. Returns (out [B, Hq, S, D] in q's dtype, lse [B, Hq, S] float32);
    query rows at or beyond ``seq_lens[b]`` (padding) are 0 with lse = -inf.
    """
    B, Hq, S, D = check_qk(q, k)
    check_block_list(kv_num_blocks, kv_indices, B, Hq, num_blocks(S, block_size))
    Hkv, G = k.shape[1], kv_num_blocks.shape[1]
    dev = q.device
    lens = sequence_lengths(seq_lens, B, S, dev)
    out = torch.zeros(B, Hq, S, D, dtype=torch.float32, device=dev)
    lse = torch.full((B, Hq, S), float("-inf"), dtype=torch.float32, device=dev)
    head_group = torch.arange(Hq, device=dev) // (Hq // G)
    head_kv = torch.arange(Hq, device=dev) // (Hq // Hkv)
    b_idx = torch.arange(B, device=dev)[:, None, None]
    offs = torch.arange(block_size, device=dev)
    kf, vf = k.float(), v.float()
    for qb in range(num_blocks(S, block_size)):
        s0, s1 = qb * block_size, min(S, (qb + 1) * block_size)
        count = kv_num_blocks[:, :, qb].long()[:, head_group]
        width = int(count.max())
        if width == 0:
            continue
        idx = kv_indices[:, :, qb, :width].long()[:, head_group]
        pos = (idx[..., None] * block_size + offs).flatten(-2)
        slot_ok = (torch.arange(width, device=dev)[None, None, :] < count[..., None]).repeat_interleave(
            block_size, -1
        )
        pos_c = pos.clamp(max=S - 1)
        ks = kf[b_idx, head_kv[None, :, None], pos_c]
        vs = vf[b_idx, head_kv[None, :, None], pos_c]
        scores = torch.einsum("bhqd,bhkd->bhqk", q[:, :, s0:s1].float(), ks) * scale
        qpos = torch.arange(s0, s1, device=dev)
        keep = (
            slot_ok[:, :, None, :]
            & (pos[:, :, None, :] <= qpos[None, None, :, None])
            & (pos[:, :, None, :] < lens[:, None, None, None])
            & (qpos[None, None, :, None] < lens[:, None, None, None])
        )
        scores = scores.masked_fill(~keep, float("-inf"))
        row_lse = torch.logsumexp(scores, dim=-1)
        probs = torch.nan_to_num(
            torch.exp(scores - row_lse[..., None]), 0.0
        )  # out of place: autograd saved it
        out[:, :, s0:s1] = torch.einsum("bhqk,bhkd->bhqd", probs, vs)
        lse[:, :, s0:s1] = row_lse
    return out.to(q.dtype), lse


def check_block_list(kv_num_blocks: torch.Tensor, kv_indices: torch.Tensor, B: int, Hq: int, nq: int) -> None:
    if kv_num_blocks.dim() != 3 or kv_indices.dim() != 4:
        raise ValueError(
            f"kv_num_blocks must be [B, G, nQ] and kv_indices [B, G, nQ, W], got "
            f"{tuple(kv_num_blocks.shape)} and {tuple(kv_indices.shape)}"
        )
    if (
        kv_num_blocks.shape[0] != B
        or kv_num_blocks.shape[2] != nq
        or kv_indices.shape[:3] != kv_num_blocks.shape
    ):
        raise ValueError(
            f"block list shapes {tuple(kv_num_blocks.shape)} / {tuple(kv_indices.shape)} do not match "
            f"batch {B} and {nq} query blocks"
        )
    if Hq % kv_num_blocks.shape[1]:
        raise ValueError(
            f"query heads ({Hq}) must be a multiple of the selection groups ({kv_num_blocks.shape[1]})"
        )
