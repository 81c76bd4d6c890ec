# Generated from hf_sparse_attn/ops/pooled_mass/triton.py (hf-sparse-attn 0.1.0, ops 52b9c680fcd2); do not edit.
"""Triton block-pooled causal attention mass (spec: ``naive.py`` beside this file).

Two kernels over work units of one query block x ``HEADS`` query heads of one kv head x one chunk of
``CHUNK`` key blocks (equal-sized units keep every SM busy across the causal triangle):

1. ``_block_lse_kernel`` walks its key blocks once; per key block it stores each row's log-sum-exp of
   that block in a scratch buffer and folds it into the chunk's running (max, sum) per row.
2. ``_mass_from_lse_kernel`` combines the chunks' (max, sum) into each row's log-sum-exp, turns its
   scratch entries into the row's probability mass per key block (one exp per row and block, 1/BLOCK of
   the score exps), averages over the block's valid queries and the group's heads
   (1 / (heads per group x valid queries)) and adds that into the output row.

A two-pass design (normalizer first, then normalized mass) spends two exps per score, and the exps bound
this op (the indexer's head dim is 16): one pass is ~2x faster. Output is O((S / block)^2); the scratch
is bounded by splitting the causal triangle over several launches, never S x S.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..common import (
    LOG2E,
    check_groups,
    check_mass_kernel_inputs,
    check_qk,
    check_scale,
    num_blocks,
    sequence_lengths,
    stacked_heads,
    unit_last_stride,
)

SCRATCH_ELEMENTS = 1 << 26
CHUNK = 128
KB_TILE = 64


@triton.jit
def _unit(pid_h, QB1, HQ: tl.constexpr, HEADS: tl.constexpr, REP: tl.constexpr, GROUP_HEADS: tl.constexpr):
    """(batch, first head, kv head, selection group, query block) of a program."""
    packs: tl.constexpr = HQ // HEADS
    b = pid_h // packs
    h0 = (pid_h % packs) * HEADS
    return b, h0, h0 // REP, h0 // GROUP_HEADS, QB1 - 1 - tl.program_id(1)


@triton.jit
def _scratch_row(SCRATCH, pid_h, qb, QB0, QB1, ROWS: tl.constexpr):
    """This program's scratch: [qb + 1 key blocks, ROWS], triangles packed from QB0, one per pid_h."""
    area = (QB1 * (QB1 + 1) - QB0 * (QB0 + 1)) // 2
    tri = (qb.to(tl.int64) * (qb + 1) - QB0 * (QB0 + 1)) // 2
    return SCRATCH + (pid_h.to(tl.int64) * area + tri) * ROWS


@triton.jit
def _fold(m_i, l_i, m_b, c_b):
    """Add a (max, sum of exp2(x - max)) pair per row into the running one (log2 domain)."""
    m_new = tl.maximum(m_i, m_b)
    return m_new, l_i * tl.math.exp2(m_i - m_new) + c_b * tl.math.exp2(m_b - m_new)


@triton.jit
def _block_lse(s, qk_scale):
    """(max, sum of exp2) per row of one key block's unscaled scores ``s`` (masked entries -inf; each
    row keeps at least one); the scale sits inside the exponent, one FMA per score (qk_scale > 0)."""
    m_b = tl.max(s, 1) * qk_scale
    return m_b, tl.sum(tl.math.exp2(s * qk_scale - m_b[:, None]), 1)


@triton.jit
def _block_lse_kernel(
    Q,
    K,
    LENS,
    SCRATCH,
    PART,
    qk_scale,
    stride_qb,
    stride_qh,
    stride_qs,
    stride_kb,
    stride_kh,
    stride_ks,
    S,
    NQB,
    QB0,
    QB1,
    HQ: tl.constexpr,
    REP: tl.constexpr,
    GROUP_HEADS: tl.constexpr,
    HEADS: tl.constexpr,
    BLOCK: tl.constexpr,
    D: tl.constexpr,
    CHUNK: tl.constexpr,
    NCH: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_h = tl.program_id(0)
    b, h0, kvh, g, qb = _unit(pid_h, QB1, HQ, HEADS, REP, GROUP_HEADS)
    kb0 = tl.program_id(2) * CHUNK
    L = tl.load(LENS + b)
    if (kb0 <= qb) & (qb * BLOCK < L):
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
        scratch = _scratch_row(SCRATCH, pid_h, qb, QB0, QB1, ROWS)
        m_i = tl.full([ROWS], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([ROWS], dtype=tl.float32)
        for kb in range(kb0, tl.minimum(kb0 + CHUNK, qb)):
            k = tl.load(k_base + (kb * BLOCK + offs_n)[None, :] * stride_ks + offs_d[:, None])
            m_b, c_b = _block_lse(tl.dot(q, k, input_precision=PRECISION), qk_scale)
            tl.store(scratch + kb * ROWS + rows, m_b + tl.math.log2(c_b))
            m_i, l_i = _fold(m_i, l_i, m_b, c_b)
        if kb0 + CHUNK > qb:
            kpos = qb * BLOCK + offs_n
            k = tl.load(
                k_base + kpos[None, :] * stride_ks + offs_d[:, None], mask=(kpos < S)[None, :], other=0.0
            )
            s = tl.where(
                kpos[None, :] <= r_pos[:, None], tl.dot(q, k, input_precision=PRECISION), float("-inf")
            )
            m_b, c_b = _block_lse(s, qk_scale)
            tl.store(scratch + qb * ROWS + rows, m_b + tl.math.log2(c_b))
            m_i, l_i = _fold(m_i, l_i, m_b, c_b)
        part = PART + ((pid_h.to(tl.int64) * NQB + qb) * NCH + tl.program_id(2)) * 2 * ROWS
        tl.store(part + rows, m_i)
        tl.store(part + ROWS + rows, l_i)


@triton.jit
def _mass_from_lse_kernel(
    OUT,
    LENS,
    SCRATCH,
    PART,
    S,
    NQB,
    QB0,
    QB1,
    HQ: tl.constexpr,
    REP: tl.constexpr,
    GROUP_HEADS: tl.constexpr,
    G: tl.constexpr,
    HEADS: tl.constexpr,
    BLOCK: tl.constexpr,
    CHUNK: tl.constexpr,
    NCH: tl.constexpr,
    KB_TILE: tl.constexpr,
):
    pid_h = tl.program_id(0)
    b, h0, kvh, g, qb = _unit(pid_h, QB1, HQ, HEADS, REP, GROUP_HEADS)
    kb0 = tl.program_id(2) * CHUNK
    L = tl.load(LENS + b)
    n_valid = tl.minimum(L - qb * BLOCK, BLOCK)
    if (kb0 <= qb) & (n_valid > 0):
        ROWS: tl.constexpr = HEADS * BLOCK
        rows = tl.arange(0, ROWS)
        r_pos = qb * BLOCK + rows % BLOCK
        part = PART + (pid_h.to(tl.int64) * NQB + qb) * NCH * 2 * ROWS
        m_i = tl.full([ROWS], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([ROWS], dtype=tl.float32)
        for c in range(0, qb // CHUNK + 1):
            m_i, l_i = _fold(
                m_i, l_i, tl.load(part + c * 2 * ROWS + rows), tl.load(part + c * 2 * ROWS + ROWS + rows)
            )
        lse = m_i + tl.math.log2(l_i)
        weight = tl.where(r_pos < L, 1.0 / (GROUP_HEADS * n_valid.to(tl.float32)), 0.0)
        scratch = _scratch_row(SCRATCH, pid_h, qb, QB0, QB1, ROWS)
        out_row = OUT + ((b * G + g) * NQB + qb) * NQB
        offs_t = tl.arange(0, KB_TILE)
        for t0 in range(kb0, tl.minimum(kb0 + CHUNK, qb + 1), KB_TILE):
            kbs = t0 + offs_t
            in_row = (kbs <= qb) & (kbs < kb0 + CHUNK)
            block_lse = tl.load(
                scratch + kbs[:, None] * ROWS + rows[None, :], mask=in_row[:, None], other=0.0
            )
            p = tl.math.exp2(block_lse - lse[None, :]) * weight[None, :]
            tl.atomic_add(out_row + kbs, tl.sum(p, 1), mask=in_row)


def _triangle(n: int) -> int:
    return n * (n + 1) // 2


def _launch_ranges(nq: int, per_block: int) -> list[tuple[int, int]]:
    """Split query blocks [0, nq) into launches of about equal causal-triangle area (key blocks), so
    the scratch (``per_block`` floats per key block) stays near ``SCRATCH_ELEMENTS``."""
    total = _triangle(nq)
    launches = max(1, math.ceil(total * per_block / SCRATCH_ELEMENTS))
    ends = []
    for i in range(1, launches + 1):
        area = math.ceil(total * i / launches)
        end = (math.isqrt(8 * area + 1) - 1) // 2  # the largest end with _triangle(end) <= area
        ends.append(min(nq, end if _triangle(end) >= area else end + 1))
    starts = [0, *ends[:-1]]
    return [(s, e) for s, e in zip(starts, ends, strict=True) if e > s]


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
    check_groups(H, groups)
    check_mass_kernel_inputs(q, k, d)
    check_scale(scale)
    Hk = k.shape[1]
    rep, group_heads = H // Hk, H // groups
    heads = stacked_heads((128 if d <= 128 else 64) // block_size, rep, group_heads)
    q, k = unit_last_stride(q, k)
    nq = num_blocks(S, block_size)
    lens = sequence_lengths(seq_lens, B, S, q.device, torch.int32)
    out = torch.zeros(B, groups, nq, nq, dtype=torch.float32, device=q.device)
    programs, rows = B * (H // heads), heads * block_size
    ranges = _launch_ranges(nq, programs * rows)
    widest = max(_triangle(e) - _triangle(s) for s, e in ranges)
    scratch = torch.empty(programs * widest * rows, dtype=torch.float32, device=q.device)
    chunks = num_blocks(nq, CHUNK)
    part = torch.empty(programs * nq * chunks * 2 * rows, dtype=torch.float32, device=q.device)
    shape = {"HQ": H, "REP": rep, "GROUP_HEADS": group_heads, "HEADS": heads, "BLOCK": block_size}
    for qb0, qb1 in ranges:
        grid = (programs, qb1 - qb0, num_blocks(qb1, CHUNK))
        _block_lse_kernel[grid](
            q,
            k,
            lens,
            scratch,
            part,
            scale * LOG2E,
            q.stride(0),
            q.stride(1),
            q.stride(2),
            k.stride(0),
            k.stride(1),
            k.stride(2),
            S,
            nq,
            qb0,
            qb1,
            **shape,
            D=d,
            CHUNK=CHUNK,
            NCH=chunks,
            PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
            num_warps=8 if d > 128 else 4,
            num_stages=2,
        )
        _mass_from_lse_kernel[grid](
            out,
            lens,
            scratch,
            part,
            S,
            nq,
            qb0,
            qb1,
            **shape,
            G=groups,
            CHUNK=CHUNK,
            NCH=chunks,
            KB_TILE=KB_TILE,
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
