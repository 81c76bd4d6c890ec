# Generated from hf_sparse_attn/ops/pooled_mass/triton.py (hf-sparse-attn 0.1.0, ops 07f51dfe4540); do not edit.
"""Triton block-pooled causal attention mass (spec: ``naive.py`` beside this file).

One program = one query block x ``HEADS`` query heads of one kv head. Pass 1 walks the causal key
blocks for each row's max and normalizer (online softmax); pass 2 walks them again, normalizes, sums
the probabilities of the block's valid queries per key block, and adds that (weighted by
1 / (heads per group x valid queries)) into its output cell. Only block-level outputs are written:
memory is O((S / block)^2), never S x S.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common import check_qk, num_blocks, sequence_lengths, stacked_heads

LOG2E = 1.4426950408889634


@triton.jit
def _pooled_mass_kernel(
    Q,
    K,
    OUT,
    LENS,
    qk_scale,
    stride_qb,
    stride_qh,
    stride_qs,
    stride_kb,
    stride_kh,
    stride_ks,
    S,
    NQB,
    HQ: tl.constexpr,
    REP: tl.constexpr,
    GROUP_HEADS: tl.constexpr,
    G: tl.constexpr,
    HEADS: tl.constexpr,
    BLOCK: tl.constexpr,
    D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_h = tl.program_id(0)
    qb = NQB - 1 - tl.program_id(1)
    packs: tl.constexpr = HQ // HEADS
    b = pid_h // packs
    h0 = (pid_h % packs) * HEADS
    kvh = h0 // REP
    g = h0 // GROUP_HEADS
    L = tl.load(LENS + b)
    n_valid = tl.minimum(L - qb * BLOCK, BLOCK)
    if n_valid > 0:
        ROWS: tl.constexpr = HEADS * BLOCK
        rows = tl.arange(0, ROWS)
        r_head = h0 + rows // BLOCK
        r_pos = qb * BLOCK + rows % BLOCK
        offs_d = tl.arange(0, D)
        offs_n = tl.arange(0, BLOCK)
        q = tl.load(
            Q + b * stride_qb + r_head[:, None] * stride_qh + r_pos[:, None] * stride_qs + offs_d[None, :],
            mask=(r_pos < S)[:, None],
            other=0.0,
        )
        k_base = K + b * stride_kb + kvh * stride_kh
        m_i = tl.full([ROWS], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([ROWS], dtype=tl.float32)
        for kb in range(0, qb):
            k = tl.load(k_base + (kb * BLOCK + offs_n)[None, :] * stride_ks + offs_d[:, None])
            s = tl.dot(q, k, input_precision=PRECISION) * qk_scale
            m_new = tl.maximum(m_i, tl.max(s, 1))
            l_i = l_i * tl.math.exp2(m_i - m_new) + tl.sum(tl.math.exp2(s - m_new[:, None]), 1)
            m_i = m_new
        kpos = qb * BLOCK + offs_n
        k_diag = tl.load(
            k_base + kpos[None, :] * stride_ks + offs_d[:, None], mask=(kpos < S)[None, :], other=0.0
        )
        causal = kpos[None, :] <= r_pos[:, None]
        s = tl.where(causal, tl.dot(q, k_diag, input_precision=PRECISION) * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        l_i = l_i * tl.math.exp2(m_i - m_new) + tl.sum(tl.math.exp2(s - m_new[:, None]), 1)
        m_i = m_new

        weight = 1.0 / (GROUP_HEADS * n_valid.to(tl.float32))
        inv_l = tl.where((r_pos < L) & (l_i > 0), weight / l_i, 0.0)
        out_row = OUT + ((b * G + g) * NQB + qb) * NQB
        for kb in range(0, qb):
            k = tl.load(k_base + (kb * BLOCK + offs_n)[None, :] * stride_ks + offs_d[:, None])
            s = tl.dot(q, k, input_precision=PRECISION) * qk_scale
            p = tl.math.exp2(s - m_i[:, None]) * inv_l[:, None]
            tl.atomic_add(out_row + kb, tl.sum(tl.sum(p, 1), 0))
        s = tl.where(causal, tl.dot(q, k_diag, input_precision=PRECISION) * qk_scale, float("-inf"))
        p = tl.math.exp2(s - m_i[:, None]) * inv_l[:, None]
        tl.atomic_add(out_row + qb, tl.sum(tl.sum(p, 1), 0))


def pooled_attention_mass_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    block_size: int,
    scale: float,
    groups: int,
    seq_lens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as ``naive.pooled_attention_mass``."""
    B, H, S, d = check_qk(q, k)
    if H % groups:
        raise ValueError(f"query heads ({H}) must be a multiple of the selection groups ({groups})")
    if k.dtype != q.dtype:
        raise ValueError(f"q and k dtypes differ: {q.dtype} vs {k.dtype}")
    if d < 16 or d & (d - 1) or d > 256:
        raise ValueError(f"head dim {d} is not supported by the Triton kernel (a power of two in [16, 256])")
    Hk = k.shape[1]
    rep, group_heads = H // Hk, H // groups
    heads = stacked_heads((128 if d <= 128 else 64) // block_size, rep, group_heads)
    q, k = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k))
    nq = num_blocks(S, block_size)
    lens = sequence_lengths(seq_lens, B, S, q.device, torch.int32)
    out = torch.zeros(B, groups, nq, nq, dtype=torch.float32, device=q.device)
    _pooled_mass_kernel[(B * (H // heads), nq)](
        q,
        k,
        out,
        lens,
        scale * LOG2E,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        S,
        nq,
        HQ=H,
        REP=rep,
        GROUP_HEADS=group_heads,
        G=groups,
        HEADS=heads,
        BLOCK=block_size,
        D=d,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=8 if d > 128 else 4,
        num_stages=2,
    )
    return out


@torch.library.custom_op("sparse_prefill_kernels::pooled_attention_mass", mutates_args=())
def pooled_attention_mass_op(
    q: torch.Tensor, k: torch.Tensor, seq_lens: torch.Tensor, block_size: int, scale: float, groups: int
) -> torch.Tensor:
    """``torch.library`` op around the kernel, so ``torch.compile`` traces through it."""
    return pooled_attention_mass_triton(q, k, block_size, scale, groups, seq_lens)


@pooled_attention_mass_op.register_fake
def _(q, k, seq_lens, block_size, scale, groups):
    nq = num_blocks(q.shape[2], block_size)
    return q.new_empty(q.shape[0], groups, nq, nq, dtype=torch.float32)
