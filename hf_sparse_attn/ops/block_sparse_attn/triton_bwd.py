"""Triton backward of block-sparse causal GQA attention (spec: autograd through ``naive.py``).

FlashAttention-2's backward over a block list: ``_dq_kernel`` walks each query tile's listed key
blocks (the forward's lists); ``_dkdv_kernel`` walks, for each key tile, the query blocks whose list
holds it (the transposed lists, built once per call) for every query head of its kv head. Both
recompute the probabilities from the forward's log-sum-exp; the causal and padding masks apply to
every tile, so any list order is handled. It exists so that long-context fine-tuning (e.g. LoRA)
can run with sparse prefill on CUDA; ``tests/test_triton_kernels.py`` checks it against autograd
through the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common import LOG2E, num_blocks


@triton.jit
def _probs(q, k, rows, kpos, lse, L, S, qk_scale, PRECISION: tl.constexpr):
    """exp(scores - lse) of a [M, N] tile, 0 where masked (future keys, padding rows, keys past S)."""
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
    keep = (kpos[None, :] <= rows[:, None]) & (rows < L)[:, None] & (kpos < S)[None, :]
    return tl.where(keep, tl.math.exp2(s * qk_scale - lse[:, None] * 1.4426950408889634), 0.0)


@triton.jit
def _row_stats(LSE, DELTA, b, h, HQ: tl.constexpr, S, rows, L):
    """The rows' forward log-sum-exp and delta = rowsum(dO * O), 0 on padding rows."""
    offs = (b * HQ + h) * S + rows
    return tl.load(LSE + offs, mask=rows < L, other=0.0), tl.load(DELTA + offs, mask=rows < L, other=0.0)


@triton.jit
def _score_grad(p, do, v, delta, PRECISION: tl.constexpr):
    """dS = P * (dO V^T - delta): the softmax's backward on one [M, N] tile."""
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    return p * (dp - delta[:, None])


@triton.jit
def _load_rows(ptr, stride_b, stride_h, stride_s, b, h, rows, S, D: tl.constexpr):
    offs_d = tl.arange(0, D)
    ptrs = ptr + b * stride_b + h * stride_h + rows[:, None] * stride_s + offs_d[None, :]
    return tl.load(ptrs, mask=(rows < S)[:, None], other=0.0)


@triton.jit
def _dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, NUM, IDX, LENS, qk_scale, scale,
    sqb, sqh, sqs, skb, skh, sks, sdb, sdh, sds, sgb, sgh, sgs,
    snb, sng, snq, sib, sig, siq,
    S,
    HQ: tl.constexpr, REP: tl.constexpr, GROUP_HEADS: tl.constexpr, BLOCK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    b, h = pid // HQ, pid % HQ
    kvh, g = h // REP, h // GROUP_HEADS
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    qb = (tl.program_id(1) * BLOCK_M) // BLOCK
    L = tl.load(LENS + b)
    q = _load_rows(Q, sqb, sqh, sqs, b, h, rows, S, D)
    do = _load_rows(DO, sdb, sdh, sds, b, h, rows, S, D)
    lse, delta = _row_stats(LSE, DELTA, b, h, HQ, S, rows, L)
    dq = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    n = tl.load(NUM + b * snb + g * sng + qb * snq)
    for i in range(0, n):
        kb = tl.load(IDX + b * sib + g * sig + qb * siq + i)
        for j in tl.static_range(BLOCK // BLOCK_N):
            kpos = kb * BLOCK + j * BLOCK_N + tl.arange(0, BLOCK_N)
            k = _load_rows(K, skb, skh, sks, b, kvh, kpos, S, D)
            v = _load_rows(V, skb, skh, sks, b, kvh, kpos, S, D)
            p = _probs(q, k, rows, kpos, lse, L, S, qk_scale, PRECISION)
            ds = _score_grad(p, do, v, delta, PRECISION)
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    offs_d = tl.arange(0, D)
    ptrs = DQ + b * sgb + h * sgh + rows[:, None] * sgs + offs_d[None, :]
    tl.store(ptrs, (dq * scale).to(DQ.dtype.element_ty), mask=(rows < S)[:, None])


@triton.jit
def _dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, TNUM, TIDX, LENS, qk_scale, scale,
    sqb, sqh, sqs, skb, skh, sks, sdb, sdh, sds, sgb, sgh, sgs,
    snb, sng, snk, sib, sig, sik,
    S,
    HQ: tl.constexpr, HKV: tl.constexpr, REP: tl.constexpr, GROUP_HEADS: tl.constexpr,
    BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    b, kvh = pid // HKV, pid % HKV
    kpos = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    kb = (tl.program_id(1) * BLOCK_N) // BLOCK
    L = tl.load(LENS + b)
    k = _load_rows(K, skb, skh, sks, b, kvh, kpos, S, D)
    v = _load_rows(V, skb, skh, sks, b, kvh, kpos, S, D)
    dk = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    for r in range(0, REP):
        h = kvh * REP + r
        g = h // GROUP_HEADS
        n = tl.load(TNUM + b * snb + g * sng + kb * snk)
        for i in range(0, n):
            qb = tl.load(TIDX + b * sib + g * sig + kb * sik + i)
            for j in tl.static_range(BLOCK // BLOCK_M):
                rows = qb * BLOCK + j * BLOCK_M + tl.arange(0, BLOCK_M)
                q = _load_rows(Q, sqb, sqh, sqs, b, h, rows, S, D)
                do = _load_rows(DO, sdb, sdh, sds, b, h, rows, S, D)
                lse, delta = _row_stats(LSE, DELTA, b, h, HQ, S, rows, L)
                p = _probs(q, k, rows, kpos, lse, L, S, qk_scale, PRECISION)
                dv += tl.dot(tl.trans(p).to(do.dtype), do, input_precision=PRECISION)
                ds = _score_grad(p, do, v, delta, PRECISION)
                dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=PRECISION)
    offs_d = tl.arange(0, D)
    ptrs = b * sgb + kvh * sgh + kpos[:, None] * sgs + offs_d[None, :]
    tl.store(DK + ptrs, (dk * scale).to(DK.dtype.element_ty), mask=(kpos < S)[:, None])
    tl.store(DV + ptrs, dv.to(DV.dtype.element_ty), mask=(kpos < S)[:, None])


def transposed_block_lists(
    kv_num_blocks: torch.Tensor, kv_indices: torch.Tensor, key_blocks: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each (batch, group, key block): how many query blocks list it and which (ascending),
    int32 [B, G, nK] and [B, G, nK, W]."""
    B, G, nq, W = kv_indices.shape
    listed = torch.arange(W, device=kv_indices.device) < kv_num_blocks[..., None]
    hit = torch.zeros(B, G, nq, key_blocks + 1, dtype=torch.bool, device=kv_indices.device)
    hit.scatter_(-1, torch.where(listed, kv_indices.long(), key_blocks), True)
    by_key = hit[..., :key_blocks].transpose(2, 3)  # [B, G, nK, nQ]
    counts = by_key.sum(-1)
    query_block = torch.arange(nq, device=kv_indices.device)
    order = torch.sort(torch.where(by_key, query_block, nq), -1).values
    width = max(1, int(counts.max()))  # backward only: one host sync per call
    return counts.to(torch.int32), order[..., :width].to(torch.int32).contiguous()


def block_sparse_attention_backward_triton(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    kv_num_blocks: torch.Tensor,
    kv_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    block_size: int,
    scale: float,
    grad_lse: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of ``block_sparse_attention`` given the forward's output and log-sum-exp."""
    B, Hq, S, D = q.shape
    Hkv, G = k.shape[1], kv_num_blocks.shape[1]
    nq = num_blocks(S, block_size)
    valid_rows = torch.isfinite(lse)
    delta = (grad_out.float() * out.float()).sum(-1)
    if grad_lse is not None:  # d lse / d score = the probability: folds into delta
        delta = delta - grad_lse.float()
    delta = torch.where(valid_rows, delta, 0.0).contiguous()
    lse = lse.contiguous()
    q, k, v, grad_out = q.contiguous(), k.contiguous(), v.contiguous(), grad_out.contiguous()
    num = kv_num_blocks.to(torch.int32).contiguous()
    idx = kv_indices.to(torch.int32).contiguous()
    tnum, tidx = transposed_block_lists(num, idx, nq)
    lens = seq_lens.to(device=q.device, dtype=torch.int32)
    dq = torch.empty_like(q)
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    tile = min(block_size, 64 if D <= 128 else 32)
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    common = dict(
        BLOCK=block_size,
        BLOCK_M=tile,
        BLOCK_N=tile,
        D=D,
        PRECISION=precision,
        num_warps=8 if D > 128 else 4,
        num_stages=1,
    )
    strides = (*q.stride()[:3], *k.stride()[:3], *grad_out.stride()[:3])
    _dq_kernel[(B * Hq, triton.cdiv(nq * block_size, tile))](
        q, k, v, grad_out, lse, delta, dq, num, idx, lens, scale * LOG2E, scale,
        *strides, *dq.stride()[:3], *num.stride(), *idx.stride()[:3], S,
        HQ=Hq, REP=Hq // Hkv, GROUP_HEADS=Hq // G, **common,
    )  # fmt: skip
    _dkdv_kernel[(B * Hkv, triton.cdiv(nq * block_size, tile))](
        q, k, v, grad_out, lse, delta, dk, dv, tnum, tidx, lens, scale * LOG2E, scale,
        *strides, *dk.stride()[:3], *tnum.stride(), *tidx.stride()[:3], S,
        HQ=Hq, HKV=Hkv, REP=Hq // Hkv, GROUP_HEADS=Hq // G, **common,
    )  # fmt: skip
    return dq, dk, dv
