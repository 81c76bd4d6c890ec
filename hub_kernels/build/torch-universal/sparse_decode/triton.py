# Generated from hf_sparse_attn/ops/sparse_decode/triton.py (hf-sparse-attn 0.1.0, ops 52b9c680fcd2); do not edit.
"""Triton block-sparse decode attention (spec: ``naive.py`` beside this file).

Split-KV ("flash decoding"): a decode step has one query per head, far too little work for one
program per head, so program (row x kv head, split) walks its share of the block list with all the
query heads of that kv head stacked (padded to 16 rows for ``tl.dot``) and writes a partial
(max, sum, accumulator); a second kernel merges the splits. Two launches per layer, a grid fixed by
shapes (no host sync on the selection sizes). The online-softmax step is the prefill kernel's
(``_row_max`` / ``_update``); every cached key precedes the query, so the only masks are the row's
cache length and, for static or left-padded caches, its key mask. K / V come through pointer loads, not the prefill's TMA descriptors: building two
descriptors on the host costs ~0.1 ms per call, as much as the whole decode kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..block_sparse_attn.triton import _row_max, _update
from ..common import LOG2E, check_decode, check_key_mask, check_scale, sequence_lengths, unit_last_stride


@triton.jit
def _cache_tile(
    q,
    k_base,
    v_base,
    km_base,
    kpos,
    offs_d,
    m_i,
    l_i,
    acc,
    qk_scale,
    stride_ks,
    stride_vs,
    L,
    HAS_MASK: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One online-softmax step over the cached keys at ``kpos`` (masked past ``L`` and by the key mask)."""
    ok = kpos < L
    if HAS_MASK:
        ok = ok & (tl.load(km_base + kpos, mask=ok, other=0) != 0)
    k = tl.load(k_base + kpos[None, :] * stride_ks + offs_d[:, None], mask=ok[None, :], other=0.0)
    s = tl.where(ok[None, :], tl.dot(q, k, input_precision=PRECISION), float("-inf"))
    m_new = _row_max(s, m_i, qk_scale, True)
    v = tl.load(v_base + kpos[:, None] * stride_vs + offs_d[None, :], mask=ok[:, None], other=0.0)
    l_i, acc = _update(s, v, m_i, m_new, l_i, acc, qk_scale, PRECISION)
    return m_new, l_i, acc


@triton.jit
def _decode_split_kernel(
    Q,
    K,
    V,
    NUM,
    IDX,
    LENS,
    KMASK,
    PO,
    PM,
    PL,
    qk_scale,
    stride_qb,
    stride_qh,
    stride_kb,
    stride_kh,
    stride_ks,
    stride_vb,
    stride_vh,
    stride_vs,
    stride_nb,
    stride_ng,
    stride_ib,
    stride_ig,
    stride_mb,
    per_split,
    SPLITS,
    HQ: tl.constexpr,
    HKV: tl.constexpr,
    REP: tl.constexpr,
    KV_PER_GROUP: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_N: tl.constexpr,
    D: tl.constexpr,
    HAS_MASK: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    b = pid // HKV
    kvh = pid % HKV
    g = kvh // KV_PER_GROUP
    L = tl.load(LENS + b)
    n = tl.load(NUM + b * stride_nb + g * stride_ng)

    rows = tl.arange(0, ROWS)
    row_ok = rows < REP
    heads = kvh * REP + rows
    offs_d = tl.arange(0, D)
    offs_n = tl.arange(0, BLOCK_N)
    q = tl.load(
        Q + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :], mask=row_ok[:, None], other=0.0
    )
    k_base = K + b * stride_kb + kvh * stride_kh
    v_base = V + b * stride_vb + kvh * stride_vh
    idx_base = IDX + b * stride_ib + g * stride_ig

    m_i = tl.full([ROWS], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([ROWS], dtype=tl.float32)
    acc = tl.zeros([ROWS, D], dtype=tl.float32)
    start = split * per_split
    end = tl.minimum(n, start + per_split)
    for i in range(start, end):
        kb = tl.load(idx_base + i)
        for j in tl.static_range(BLOCK // BLOCK_N):
            kpos = kb * BLOCK + j * BLOCK_N + offs_n
            m_i, l_i, acc = _cache_tile(
                q,
                k_base,
                v_base,
                KMASK + b * stride_mb,
                kpos,
                offs_d,
                m_i,
                l_i,
                acc,
                qk_scale,
                stride_ks,
                stride_vs,
                L,
                HAS_MASK,
                PRECISION,
            )
    part = (b * HQ + heads) * SPLITS + split
    tl.store(PO + part[:, None] * D + offs_d[None, :], acc, mask=row_ok[:, None])
    tl.store(PM + part, tl.where(l_i > 0, m_i, float("-inf")), mask=row_ok)
    tl.store(PL + part, l_i, mask=row_ok)


@triton.jit
def _decode_merge_kernel(
    PO,
    PM,
    PL,
    Out,
    LSE,
    stride_ob,
    stride_oh,
    SPLITS,
    HQ: tl.constexpr,
    SPLITS_P2: tl.constexpr,
    D: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // HQ
    h = pid % HQ
    s = tl.arange(0, SPLITS_P2)
    ok = s < SPLITS
    offs_d = tl.arange(0, D)
    m = tl.load(PM + pid * SPLITS + s, mask=ok, other=float("-inf"))
    lsum = tl.load(PL + pid * SPLITS + s, mask=ok, other=0.0)
    m_max = tl.max(m, 0)
    m_safe = tl.where(m_max == float("-inf"), 0.0, m_max)
    w = tl.where(m == float("-inf"), 0.0, tl.math.exp2(m - m_safe))
    total = tl.sum(lsum * w, 0)
    o = tl.load(PO + (pid * SPLITS + s[:, None]) * D + offs_d[None, :], mask=ok[:, None], other=0.0)
    out = tl.sum(o * w[:, None], 0) / tl.where(total > 0, total, 1.0)
    tl.store(Out + b * stride_ob + h * stride_oh + offs_d, out.to(Out.dtype.element_ty))
    lse = tl.where(
        total > 0,
        (m_safe + tl.math.log2(tl.where(total > 0, total, 1.0))) / 1.4426950408889634,
        float("-inf"),
    )
    tl.store(LSE + pid, lse)


def num_splits(width: int, programs: int, device: torch.device) -> int:
    """Splits of the block list so the grid covers about two waves of the GPU's SMs."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8
    return max(1, min(width, -(-2 * sms // max(programs, 1))))


def sparse_decode_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_num_blocks: torch.Tensor,
    kv_indices: torch.Tensor,
    block_size: int,
    scale: float,
    seq_lens: torch.Tensor | None = None,
    key_mask: torch.Tensor | None = None,
    splits: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``naive.sparse_decode_attention``; q/k/v must share a dtype."""
    B, Hq, L, D = check_decode(q, k, v, kv_num_blocks, kv_indices)
    check_scale(scale)
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q/k/v dtypes must match: {q.dtype}/{k.dtype}/{v.dtype}")
    if D not in (16, 32, 64, 128, 256):
        raise ValueError(f"head_dim {D} is not supported by the Triton kernel (16, 32, 64, 128 or 256)")
    Hkv, G = k.shape[1], kv_num_blocks.shape[1]
    rep = Hq // Hkv
    if rep > 64:
        raise ValueError(f"{rep} query heads per kv head: the decode kernel stacks at most 64")
    q, k, v = unit_last_stride(q, k, v)
    lens = sequence_lengths(seq_lens, B, L, q.device, torch.int32)
    kmask = lens if key_mask is None else check_key_mask(key_mask, B, L).to(torch.uint8)
    num = kv_num_blocks.to(torch.int32)
    idx = kv_indices.to(torch.int32)
    width = max(1, idx.shape[-1])
    splits = splits or num_splits(width, B * Hkv, q.device)
    per_split = -(-width // splits)
    splits = -(-width // per_split)
    part_o = torch.empty(B * Hq * splits, D, dtype=torch.float32, device=q.device)
    part_m = torch.empty(B * Hq * splits, dtype=torch.float32, device=q.device)
    part_l = torch.empty_like(part_m)
    _decode_split_kernel[(B * Hkv, splits)](
        q,
        k,
        v,
        num,
        idx,
        lens,
        kmask,
        part_o,
        part_m,
        part_l,
        scale * LOG2E,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        v.stride(0),
        v.stride(1),
        v.stride(2),
        num.stride(0),
        num.stride(1),
        idx.stride(0),
        idx.stride(1),
        kmask.stride(0),
        per_split,
        splits,
        HQ=Hq,
        HKV=Hkv,
        REP=rep,
        KV_PER_GROUP=Hkv // G,
        ROWS=max(16, triton.next_power_of_2(rep)),
        BLOCK=block_size,
        BLOCK_N=min(block_size, 64),
        D=D,
        HAS_MASK=key_mask is not None,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=4,
        num_stages=2,
    )
    out = torch.empty(B, Hq, 1, D, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, Hq, 1, dtype=torch.float32, device=q.device)
    _decode_merge_kernel[(B * Hq,)](
        part_o,
        part_m,
        part_l,
        out,
        lse,
        out.stride(0),
        out.stride(1),
        splits,
        HQ=Hq,
        SPLITS_P2=max(2, triton.next_power_of_2(splits)),
        D=D,
    )
    return out, lse


@torch.library.custom_op("sparse_prefill_kernels::sparse_decode_fwd", mutates_args=())
def sparse_decode_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_num_blocks: torch.Tensor,
    kv_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    block_size: int,
    scale: float,
    key_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.library`` op around the decode kernels, so ``torch.compile`` traces through it."""
    return sparse_decode_attention_triton(
        q, k, v, kv_num_blocks, kv_indices, block_size, scale, seq_lens, key_mask
    )


@sparse_decode_fwd.register_fake
def _(q, k, v, kv_num_blocks, kv_indices, seq_lens, block_size, scale, key_mask=None):
    B, Hq, _, D = q.shape
    return q.new_empty(B, Hq, 1, D), q.new_empty(B, Hq, 1, dtype=torch.float32)
