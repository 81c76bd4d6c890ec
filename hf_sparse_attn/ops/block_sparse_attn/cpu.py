"""Block-sparse attention for CPUs: the reference's contract, vectorized over chunks of query blocks.

The reference loops over query blocks one at a time (the spec, easy to read, slow); here the kept
key blocks of many query blocks are gathered at once and run through PyTorch's fused CPU attention
(the kernel behind ``F.scaled_dot_product_attention``, with an additive mask for causality, padding
and unused slots), so a sparse prefill on a CPU costs about the kept fraction of a dense one. Inference only (no autograd
checkpointing); memory is bounded by ``GATHER_CHUNK_ELEMENTS`` scores per chunk, never S x S.
"""

from __future__ import annotations

import torch

from ..common import check_qk, num_blocks, sequence_lengths
from .naive import check_block_list

GATHER_CHUNK_ELEMENTS = 1 << 24
# What F.scaled_dot_product_attention runs on CPUs, called directly for its logsumexp output.
_FUSED_ATTENTION = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def fused_cpu_attention_available() -> bool:
    return _FUSED_ATTENTION is not None


def selection_units(query_heads: int, kv_heads: int, groups: int) -> int:
    """Head units that share one kv head and one block list (the larger of kv heads and groups)."""
    units = max(kv_heads, groups)
    if units % kv_heads or units % groups or query_heads % units:
        raise ValueError(
            f"selection groups ({groups}) and kv heads ({kv_heads}) must divide each other and the query "
            f"heads ({query_heads})"
        )
    return units


def block_sparse_attention_cpu(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_num_blocks: torch.Tensor,
    kv_indices: torch.Tensor,
    block_size: int,
    scale: float,
    seq_lens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same inputs and outputs as ``naive.block_sparse_attention``."""
    B, Hq, S, D = check_qk(q, k)
    nq = num_blocks(S, block_size)
    check_block_list(kv_num_blocks, kv_indices, B, Hq, nq)
    Hkv, G = k.shape[1], kv_num_blocks.shape[1]
    U = selection_units(Hq, Hkv, G)
    r = Hq // U
    dev = q.device
    lens = sequence_lengths(seq_lens, B, S, dev)
    pad = nq * block_size - S
    unit_kv = torch.arange(U, device=dev) // (U // Hkv)
    unit_group = torch.arange(U, device=dev) // (U // G)
    qf = torch.nn.functional.pad(q.float(), (0, 0, 0, pad)).view(B, U, r, nq, block_size, D)
    kf = k.float()[:, unit_kv]
    vf = v.float()[:, unit_kv]
    counts = kv_num_blocks.long()[:, unit_group]
    indices = kv_indices.long()[:, unit_group]
    out = torch.zeros(B, U, r, nq, block_size, D, dtype=torch.float32, device=dev)
    lse = torch.full((B, U, r, nq, block_size), float("-inf"), dtype=torch.float32, device=dev)
    offs = torch.arange(block_size, device=dev)
    b_idx = torch.arange(B, device=dev)[:, None, None, None]
    u_idx = torch.arange(U, device=dev)[None, :, None, None]
    for qb0, qb1, width in _gather_chunks(counts.amax(dim=(0, 1)).tolist(), B * Hq * block_size * block_size):
        nc = qb1 - qb0
        slot = torch.arange(width, device=dev)
        idx = indices[:, :, qb0:qb1, :width]
        pos = (idx[..., None] * block_size + offs).flatten(-2)  # [B, U, nc, L]
        keys = kf[b_idx, u_idx, pos.clamp(max=S - 1)]  # [B, U, nc, L, D]
        vals = vf[b_idx, u_idx, pos.clamp(max=S - 1)]
        qpos = (torch.arange(qb0, qb1, device=dev)[:, None] * block_size + offs).view(1, 1, nc, block_size, 1)
        keep = (
            (slot < counts[:, :, qb0:qb1, None]).repeat_interleave(block_size, -1)[:, :, :, None, :]
            & (pos[:, :, :, None, :] <= qpos)
            & (pos < lens[:, None, None, None])[:, :, :, None, :]
        )  # [B, U, nc, bs, L]
        bias = torch.zeros(keep.shape, dtype=torch.float32, device=dev).masked_fill_(~keep, float("-inf"))
        n, L = B * U * nc, pos.shape[-1]
        qc = qf[:, :, :, qb0:qb1].permute(0, 1, 3, 2, 4, 5).reshape(n, r, block_size, D)
        o, row_lse = _FUSED_ATTENTION(
            qc,
            keys.view(n, 1, L, D).expand(n, r, L, D),
            vals.view(n, 1, L, D).expand(n, r, L, D),
            0.0,
            False,
            attn_mask=bias.view(n, 1, block_size, L).expand(n, r, block_size, L),
            scale=scale,
        )[:2]
        attended = (keep.any(-1) & (qpos[..., 0] < lens[:, None, None, None])).view(n, 1, block_size)
        o = o.masked_fill(~attended[..., None], 0.0).view(B, U, nc, r, block_size, D)
        row_lse = row_lse.masked_fill(~attended, float("-inf")).view(B, U, nc, r, block_size)
        out[:, :, :, qb0:qb1] = o.permute(0, 1, 3, 2, 4, 5)
        lse[:, :, :, qb0:qb1] = row_lse.permute(0, 1, 3, 2, 4)
    out = out.view(B, Hq, nq * block_size, D)[:, :, :S]
    return out.to(q.dtype), lse.view(B, Hq, nq * block_size)[:, :, :S]


def _gather_chunks(widths: list[int], elements_per_slot: int) -> list[tuple[int, int, int]]:
    """(first, end, padded width) of consecutive query blocks whose scores fit ``GATHER_CHUNK_ELEMENTS``;
    blocks that keep nothing are skipped."""
    chunks: list[tuple[int, int, int]] = []
    start, width = 0, 0
    for qb, w in enumerate(widths):
        grown = max(width, w)
        if qb > start and (qb + 1 - start) * grown * elements_per_slot > GATHER_CHUNK_ELEMENTS:
            if width:
                chunks.append((start, qb, width))
            start, grown = qb, w
        width = grown
    if width:
        chunks.append((start, len(widths), width))
    return chunks
