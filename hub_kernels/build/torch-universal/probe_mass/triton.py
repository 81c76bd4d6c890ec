# Generated from hf_sparse_attn/ops/probe_mass/triton.py (hf-sparse-attn 0.1.0, ops 52b9c680fcd2); do not edit.
"""Triton row probe: dense attention mass of each query block's last valid query (spec: ``naive.py``).

One program = one query head x a tile of ``BR`` query blocks' probe rows (rows of different query
blocks, each with its own causal limit). Two passes over the key blocks up to the tile's last probe:
the first keeps each row's running (max, sum), the second adds exp2(score - log-sum-exp) per key block
into the output, weighted by 1 / (heads per group): the heads of a group meet in an atomic add. The
probe is 1/block_size of dense attention, so the second pass's recomputed scores cost little, and
the grid is fixed by shapes (no host sync on the valid lengths). Tiles are launched latest first.
"""

from __future__ import annotations

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
    unit_last_stride,
)

ROWS = 64


@triton.jit
def _probe_scores(
    q, k_base, kb, qpos, offs_n, offs_d, stride_ks, S, BLOCK: tl.constexpr, PRECISION: tl.constexpr
):
    """Unscaled scores of the probe rows on key block ``kb``; keys after a row's probe are -inf."""
    kpos = kb * BLOCK + offs_n
    k = tl.load(k_base + kpos[None, :] * stride_ks + offs_d[:, None], mask=(kpos < S)[None, :], other=0.0)
    s = tl.dot(q, k, input_precision=PRECISION)
    return tl.where(kpos[None, :] <= qpos[:, None], s, float("-inf"))


@triton.jit
def _row_probe_kernel(
    Q,
    K,
    LENS,
    OUT,
    qk_scale,
    stride_qb,
    stride_qh,
    stride_qs,
    stride_kb,
    stride_kh,
    stride_ks,
    S,
    NQB,
    NT,
    HQ: tl.constexpr,
    REP: tl.constexpr,
    GROUP_HEADS: tl.constexpr,
    G: tl.constexpr,
    BLOCK: tl.constexpr,
    BR: tl.constexpr,
    D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_h = tl.program_id(0)
    tile = NT - 1 - tl.program_id(1)
    b = pid_h // HQ
    h = pid_h % HQ
    L = tl.load(LENS + b)
    if tile * BR * BLOCK < L:
        rows = tile * BR + tl.arange(0, BR)
        qpos = tl.minimum((rows + 1) * BLOCK, L) - 1
        valid = rows * BLOCK < L
        offs_d = tl.arange(0, D)
        offs_n = tl.arange(0, BLOCK)
        q = tl.load(
            Q + b * stride_qb + h * stride_qh + qpos[:, None] * stride_qs + offs_d[None, :],
            mask=valid[:, None],
            other=0.0,
        )
        k_base = K + b * stride_kb + (h // REP) * stride_kh
        last_kb = (tl.minimum((tile * BR + BR) * BLOCK, L) - 1) // BLOCK

        m_i = tl.full([BR], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BR], dtype=tl.float32)
        for kb in range(0, last_kb + 1):
            s = _probe_scores(q, k_base, kb, qpos, offs_n, offs_d, stride_ks, S, BLOCK, PRECISION)
            m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
            m_new = tl.where(m_new == float("-inf"), 0.0, m_new)
            l_i = l_i * tl.math.exp2(m_i - m_new) + tl.sum(tl.math.exp2(s * qk_scale - m_new[:, None]), 1)
            m_i = m_new
        lse = m_i + tl.math.log2(tl.where(l_i > 0, l_i, 1.0))
        weight = tl.where(valid, 1.0 / GROUP_HEADS, 0.0)

        out_rows = OUT + ((b * G + h // GROUP_HEADS) * NQB + rows) * NQB
        for kb in range(0, last_kb + 1):
            s = _probe_scores(q, k_base, kb, qpos, offs_n, offs_d, stride_ks, S, BLOCK, PRECISION)
            mass = tl.sum(tl.math.exp2(s * qk_scale - lse[:, None]), 1) * weight
            tl.atomic_add(out_rows + kb, mass, mask=valid & (kb * BLOCK <= qpos))


def row_probe_mass_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    block_size: int,
    scale: float,
    groups: int,
    seq_lens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as ``naive.row_probe_mass``."""
    B, H, S, d = check_qk(q, k)
    check_groups(H, groups)
    check_scale(scale)
    check_mass_kernel_inputs(q, k, d)
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(
            f"block size {block_size} is not supported by the Triton kernel (a power of two >= 16)"
        )
    q, k = unit_last_stride(q, k)
    nq = num_blocks(S, block_size)
    lens = sequence_lengths(seq_lens, B, S, q.device, torch.int32)
    out = torch.zeros(B, groups, nq, nq, dtype=torch.float32, device=q.device)
    tiles = num_blocks(nq, ROWS)
    _row_probe_kernel[(B * H, tiles)](
        q,
        k,
        lens,
        out,
        scale * LOG2E,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        S,
        nq,
        tiles,
        HQ=H,
        REP=H // k.shape[1],
        GROUP_HEADS=H // groups,
        G=groups,
        BLOCK=block_size,
        BR=ROWS,
        D=d,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=8 if d > 128 else 4,
        num_stages=2,
    )
    return out


@torch.library.custom_op("sparse_prefill_kernels::row_probe_mass", mutates_args=())
def row_probe_mass_op(
    q: torch.Tensor, k: torch.Tensor, seq_lens: torch.Tensor, block_size: int, scale: float, groups: int
) -> torch.Tensor:
    """``torch.library`` op around the kernel, so ``torch.compile`` traces through it."""
    return row_probe_mass_triton(q, k, block_size, scale, groups, seq_lens)


@row_probe_mass_op.register_fake
def _(q, k, seq_lens, block_size, scale, groups):
    nq = num_blocks(q.shape[2], block_size)
    return q.new_empty(q.shape[0], groups, nq, nq, dtype=torch.float32)
