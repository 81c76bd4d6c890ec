# Generated from hf_sparse_attn/ops/decode_mass/triton.py (hf-sparse-attn 0.1.0, ops 52b9c680fcd2); do not edit.
"""Triton decode block mass (spec: ``naive.py`` beside this file).

Two launches, sized from shapes only. The first splits the keys over programs of ``NB`` whole blocks:
each reads its indexer keys once in their storage dtype and writes, per block, the max score and the
sum of exp2(score - that max). The second (one program per row) folds those into the row's
normalizer and writes mass = exp2(block max - row max) x block sum / total. The reference's fp32
copy of the whole K-cache, its [B, G, L] logits and softmax passes are never materialized, which is
most of a decode step's scoring time at long contexts.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common import LOG2E, check_scale, num_blocks, unit_last_stride
from .naive import check_decode_mass_inputs

TILE_ELEMENTS = 8192
FOLD_CHUNK = 1024


@triton.jit
def _block_stats_kernel(
    Q,
    K,
    VALID,
    BMAX,
    BSUM,
    qk_scale,
    stride_qb,
    stride_qg,
    stride_kb,
    stride_kg,
    stride_ks,
    stride_vb,
    L,
    NK,
    d,
    G: tl.constexpr,
    BLOCK: tl.constexpr,
    NB: tl.constexpr,
    DP: tl.constexpr,
    HAS_VALID: tl.constexpr,
):
    row = tl.program_id(0)
    b = row // G
    g = row % G
    blk0 = tl.program_id(1) * NB
    offs_d = tl.arange(0, DP)
    q = tl.load(Q + b * stride_qb + g * stride_qg + offs_d, mask=offs_d < d, other=0.0).to(tl.float32)
    kpos = blk0 * BLOCK + tl.arange(0, NB * BLOCK)
    inside = kpos < L
    k = tl.load(
        K + b * stride_kb + g * stride_kg + kpos[:, None] * stride_ks + offs_d[None, :],
        mask=inside[:, None] & (offs_d < d)[None, :],
        other=0.0,
    ).to(tl.float32)
    ok = inside
    if HAS_VALID:
        ok = ok & (tl.load(VALID + b * stride_vb + kpos, mask=inside, other=0) != 0)
    s = tl.where(ok, tl.sum(k * q[None, :], 1) * qk_scale, float("-inf"))
    s = tl.reshape(s, (NB, BLOCK))
    bmax = tl.max(s, 1)
    bsum = tl.sum(tl.math.exp2(s - tl.where(bmax == float("-inf"), 0.0, bmax)[:, None]), 1)
    blocks = blk0 + tl.arange(0, NB)
    tl.store(BMAX + row * NK + blocks, bmax, mask=blocks < NK)
    tl.store(BSUM + row * NK + blocks, bsum, mask=blocks < NK)


@triton.jit
def _fold_kernel(BMAX, BSUM, OUT, NK, CHUNK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.arange(0, CHUNK)
    m = tl.full([CHUNK], float("-inf"), tl.float32)
    for c in range(0, NK, CHUNK):
        m = tl.maximum(m, tl.load(BMAX + row * NK + c + offs, mask=c + offs < NK, other=float("-inf")))
    top = tl.max(m, 0)
    top = tl.where(top == float("-inf"), 0.0, top)
    total = tl.zeros([CHUNK], tl.float32)
    for c in range(0, NK, CHUNK):
        bm = tl.load(BMAX + row * NK + c + offs, mask=c + offs < NK, other=float("-inf"))
        bs = tl.load(BSUM + row * NK + c + offs, mask=c + offs < NK, other=0.0)
        total += tl.math.exp2(bm - top) * bs
    inv = 1.0 / tl.sum(total, 0)
    for c in range(0, NK, CHUNK):
        bm = tl.load(BMAX + row * NK + c + offs, mask=c + offs < NK, other=float("-inf"))
        bs = tl.load(BSUM + row * NK + c + offs, mask=c + offs < NK, other=0.0)
        tl.store(OUT + row * NK + c + offs, tl.math.exp2(bm - top) * bs * inv, mask=c + offs < NK)


def decode_block_mass_triton(
    q_idx: torch.Tensor,
    k_idx: torch.Tensor,
    block_size: int,
    scale: float,
    key_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as ``naive.decode_block_mass``; k_idx may be a strided view (a K-cache's live part)."""
    check_decode_mass_inputs(q_idx, k_idx, key_valid)
    check_scale(scale)
    if block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two for the Triton kernel, got {block_size}")
    B, G, L, d = k_idx.shape
    q_idx, k_idx = unit_last_stride(q_idx, k_idx)
    nk = num_blocks(L, block_size)
    dp = triton.next_power_of_2(d)
    nb = max(1, TILE_ELEMENTS // (block_size * dp))
    bmax = torch.empty(B * G, nk, dtype=torch.float32, device=k_idx.device)
    bsum = torch.empty_like(bmax)
    valid = bmax if key_valid is None else key_valid.contiguous().view(torch.uint8)
    _block_stats_kernel[(B * G, num_blocks(nk, nb))](
        q_idx,
        k_idx,
        valid,
        bmax,
        bsum,
        scale * LOG2E,
        q_idx.stride(0),
        q_idx.stride(1),
        k_idx.stride(0),
        k_idx.stride(1),
        k_idx.stride(2),
        valid.stride(0),
        L,
        nk,
        d,
        G=G,
        BLOCK=block_size,
        NB=nb,
        DP=dp,
        HAS_VALID=key_valid is not None,
        num_warps=4,
    )
    out = torch.empty(B, G, nk, dtype=torch.float32, device=k_idx.device)
    _fold_kernel[(B * G,)](bmax, bsum, out, nk, CHUNK=FOLD_CHUNK, num_warps=4)
    return out


@torch.library.custom_op("sparse_prefill_kernels::decode_block_mass", mutates_args=())
def decode_block_mass_op(
    q_idx: torch.Tensor, k_idx: torch.Tensor, block_size: int, scale: float, key_valid: torch.Tensor | None
) -> torch.Tensor:
    """``torch.library`` op around the kernels, so ``torch.compile`` traces through them."""
    return decode_block_mass_triton(q_idx, k_idx, block_size, scale, key_valid)


@decode_block_mass_op.register_fake
def _(q_idx, k_idx, block_size, scale, key_valid):
    B, G, L, _ = k_idx.shape
    return k_idx.new_empty(B, G, num_blocks(L, block_size), dtype=torch.float32)
