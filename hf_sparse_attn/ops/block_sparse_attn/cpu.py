"""Block-sparse attention for CPUs: the reference's contract, vectorized over chunks of query blocks.

The reference loops over query blocks one at a time (the spec, easy to read, slow); here PyTorch's
fused CPU attention (the kernel behind ``F.scaled_dot_product_attention``) runs twice: once over each
query block's own diagonal block, causal, for all query blocks at once; once over the listed blocks
left of it, gathered whole for many query blocks at a time, with one additive 0 / -inf per slot (an
unused slot or a block at or past the diagonal) and no token-level mask. The two are merged by their
log-sum-exp. A sparse prefill on a CPU then costs about the kept fraction of a dense one. Inference
only; memory is bounded by ``GATHER_CHUNK_ELEMENTS`` scores per chunk, never S x S.
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
    qf = qf.permute(0, 1, 3, 2, 4, 5).contiguous()  # [B, U, nQ, r, bs, D]: a query block's heads together
    kb = torch.nn.functional.pad(k.float(), (0, 0, 0, pad))[:, unit_kv].view(B, U, nq, block_size, D)
    vb = torch.nn.functional.pad(v.float(), (0, 0, 0, pad))[:, unit_kv].view(B, U, nq, block_size, D)
    counts = kv_num_blocks.long()[:, unit_group]
    indices = kv_indices.long()[:, unit_group]
    listed = torch.arange(indices.shape[-1], device=dev) < counts[..., None]
    query_block = torch.arange(nq, device=dev)[:, None]
    # The diagonal block, causal inside, for every query block at once (no mask tensor at all) ...
    diag_out, diag_lse = _attend(qf, kb.unsqueeze(3), vb.unsqueeze(3), None, scale, causal=True)
    has_diag = (listed & (indices == query_block)).any(-1)  # [B, U, nQ]
    diag_lse = diag_lse.masked_fill(~has_diag[..., None, None], float("-inf"))
    # ... and the listed blocks left of it, which need no token mask: one additive 0 / -inf per slot.
    out = diag_out.masked_fill_(~has_diag[..., None, None, None], 0.0)  # blocks with no left block keep these
    lse = diag_lse
    b_idx = torch.arange(B, device=dev)[:, None, None, None]
    u_idx = torch.arange(U, device=dev)[None, :, None, None]
    left = listed & (indices < query_block)
    for qb0, qb1, width in _gather_chunks(counts.amax(dim=(0, 1)).tolist(), B * Hq * block_size * block_size):
        idx = indices[:, :, qb0:qb1, :width]
        keys = kb[b_idx, u_idx, idx]  # [B, U, nc, W, bs, D]
        vals = vb[b_idx, u_idx, idx]
        bias = torch.zeros(left[:, :, qb0:qb1, :width].shape, dtype=torch.float32, device=dev)
        bias.masked_fill_(~left[:, :, qb0:qb1, :width], float("-inf"))
        o, row_lse = _attend(qf[:, :, qb0:qb1], keys, vals, bias, scale, causal=False)
        o, row_lse = _merge(o, row_lse, out[:, :, qb0:qb1], lse[:, :, qb0:qb1])
        out[:, :, qb0:qb1], lse[:, :, qb0:qb1] = o, row_lse
    qpos = (query_block * block_size + torch.arange(block_size, device=dev)).view(1, 1, nq, 1, block_size)
    padding = qpos >= lens.view(B, 1, 1, 1, 1)
    out = (
        out.masked_fill_(padding[..., None], 0.0).permute(0, 1, 3, 2, 4, 5).reshape(B, Hq, nq * block_size, D)
    )
    lse = lse.masked_fill_(padding, float("-inf")).permute(0, 1, 3, 2, 4).reshape(B, Hq, nq * block_size)
    return out[:, :, :S].to(q.dtype), lse[:, :, :S]


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slot_bias: torch.Tensor | None,
    scale: float,
    causal: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused attention of q [B, U, n, r, bs, D] over k / v [B, U, n, W, bs, D] (the r heads of a unit
    share them), ``slot_bias`` [B, U, n, W] added to every key of a slot. Returns (out, lse) shaped
    like q and q[..., 0]; rows that see no key get out 0 and lse -inf."""
    B, U, n, r, bs, D = q.shape
    W = k.shape[3]
    N, L = B * U * n, W * bs
    mask = None
    if slot_bias is not None:
        mask = slot_bias.repeat_interleave(bs, -1).view(N, 1, 1, L).expand(N, r, bs, L)
    o, row_lse = _FUSED_ATTENTION(
        q.reshape(N, r, bs, D),
        k.reshape(N, 1, L, D).expand(N, r, L, D),
        v.reshape(N, 1, L, D).expand(N, r, L, D),
        0.0,
        causal,
        attn_mask=mask,
        scale=scale,
    )[:2]
    o, row_lse = o.view(B, U, n, r, bs, D), row_lse.view(B, U, n, r, bs)
    if slot_bias is not None:  # the fused kernel returns lse 0 (not -inf) for a row with no key
        none = torch.isinf(slot_bias).all(-1)[..., None, None]
        row_lse = row_lse.masked_fill(none, float("-inf"))
        o = o.masked_fill(none[..., None], 0.0)
    return o, row_lse


def _merge(
    o1: torch.Tensor, lse1: torch.Tensor, o2: torch.Tensor, lse2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over the union of two disjoint key sets from each one's (out, lse)."""
    top = torch.maximum(lse1, lse2)
    top = torch.where(torch.isinf(top), torch.zeros_like(top), top)
    w1, w2 = torch.exp(lse1 - top), torch.exp(lse2 - top)
    total = w1 + w2
    out = (o1 * w1[..., None] + o2 * w2[..., None]) / total.clamp(min=torch.finfo(torch.float32).tiny)[
        ..., None
    ]
    return out, top + total.log()


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
