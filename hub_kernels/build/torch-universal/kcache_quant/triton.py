# Generated from hf_sparse_attn/ops/kcache_quant/triton.py (hf-sparse-attn 0.1.0, ops 52b9c680fcd2); do not edit.
"""Triton 4-bit quantize / dequantize of indexer keys (spec: ``naive.py`` beside this file).

A decode step appends one key per layer and reads the whole cache back, so both directions are one
launch each instead of a dozen small PyTorch ops. Rows [N, D] are flattened from any leading dims.
Rounding (ties to even) and the FP8 E4M3 scale bytes are computed with fp32 integer-bit arithmetic,
not hardware FP8 casts, and the division by the scale is IEEE-rounded (``div_rn``; Triton's ``/`` is
approximate on the GPU), so the codes are bit-identical to the reference on the GPU and under the Triton
interpreter (whose FP8 casts mis-round subnormals).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .naive import FORMATS, check_format

ROWS = 128


@triton.jit
def _rint(x):
    """Round to the nearest integer, ties to even (|x| < 2^22): the fp32 add does the rounding."""
    return (x + 12582912.0) - 12582912.0


@triton.jit
def _pow2(e):
    """2.0 ** e for integer tensors e in the normal fp32 range."""
    return ((e + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _e4m3_encode(v):
    """Byte of the FP8 E4M3 value nearest to v (positive, in [2^-9, 448]), ties to even."""
    e = tl.maximum(((v.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127, -6)
    steps = _rint(v * _pow2(3 - e)).to(tl.int32)  # v in units of its binade's step: 8..16 (or < 8 subnormal)
    e = tl.where(steps == 16, e + 1, e)  # rounded up into the next binade
    steps = tl.where(steps == 16, 8, steps)
    return tl.where(steps >= 8, ((e + 7) << 3) | (steps - 8), steps).to(tl.uint8)


@triton.jit
def _e4m3_decode(byte):
    """fp32 value of FP8 E4M3 bytes (non-negative scales only)."""
    b = byte.to(tl.int32)
    e = (b >> 3) & 15
    m = (b & 7).to(tl.float32)
    return tl.where(e == 0, m * 0.001953125, (8.0 + m) * _pow2(e - 10))


@triton.jit
def _quantize_kernel(
    X,
    CODES,
    SCALES,
    N,
    D: tl.constexpr,
    GROUP: tl.constexpr,
    FP4: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    ok = rows < N
    NG: tl.constexpr = D // GROUP
    x = tl.load(X + rows[:, None] * D + tl.arange(0, D)[None, :], mask=ok[:, None], other=0.0)
    g = tl.reshape(x.to(tl.float32), [BLOCK_R, NG, GROUP])
    inv_largest = 1.0 / 6.0 if FP4 else 1.0 / 7.0  # the reference's fp32(1 / largest) multiply
    byte = _e4m3_encode(tl.minimum(tl.maximum(tl.max(tl.abs(g), 2) * inv_largest, 0.001953125), 448.0))
    tl.store(SCALES + rows[:, None] * NG + tl.arange(0, NG)[None, :], byte, mask=ok[:, None])
    s = tl.math.div_rn(g, tl.broadcast_to(_e4m3_decode(byte)[:, :, None], g.shape))
    if FP4:
        a = tl.abs(s)
        idx = (a > 0.25).to(tl.int32) + (a > 0.75).to(tl.int32) + (a > 1.25).to(tl.int32)
        idx += (a > 1.75).to(tl.int32) + (a > 2.5).to(tl.int32) + (a > 3.5).to(tl.int32)
        idx += (a > 5.0).to(tl.int32)
        code = idx | (((s < 0) & (idx > 0)).to(tl.int32) << 3)
    else:
        code = tl.minimum(tl.maximum(_rint(s), -8.0), 7.0).to(tl.int32) + 8
    lo, hi = tl.split(tl.reshape(code, [BLOCK_R, D // 2, 2]))
    tl.store(
        CODES + rows[:, None] * (D // 2) + tl.arange(0, D // 2)[None, :],
        (lo | (hi << 4)).to(tl.uint8),
        mask=ok[:, None],
    )


@triton.jit
def _dequantize_kernel(
    CODES,
    SCALES,
    OUT,
    N,
    D: tl.constexpr,
    GROUP: tl.constexpr,
    FP4: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    ok = rows < N
    NG: tl.constexpr = D // GROUP
    c = tl.load(CODES + rows[:, None] * (D // 2) + tl.arange(0, D // 2)[None, :], mask=ok[:, None], other=0)
    c = c.to(tl.int32)
    nib = tl.reshape(tl.join(c & 15, c >> 4), [BLOCK_R, D])
    if FP4:
        m = nib & 7
        e = m >> 1
        frac = 1.0 + (m & 1).to(tl.float32) * 0.5
        magnitude = tl.where(
            e == 0, frac - 1.0, tl.where(e == 1, frac, tl.where(e == 2, 2.0 * frac, 4.0 * frac))
        )
        v = tl.where(nib >= 8, -magnitude, magnitude)
    else:
        v = (nib - 8).to(tl.float32)
    scale = _e4m3_decode(
        tl.load(SCALES + rows[:, None] * NG + tl.arange(0, NG)[None, :], mask=ok[:, None], other=0)
    )
    out = tl.reshape(tl.reshape(v, [BLOCK_R, NG, GROUP]) * scale[:, :, None], [BLOCK_R, D])
    tl.store(
        OUT + rows[:, None] * D + tl.arange(0, D)[None, :], out.to(OUT.dtype.element_ty), mask=ok[:, None]
    )


def _check_pow2(dim: int, group: int) -> None:
    if dim & (dim - 1) or group & (group - 1) or group < 2 or dim < group:
        raise ValueError(
            f"the Triton 4-bit kernels need power-of-two dims and groups (dim {dim}, group {group}); "
            "use the reference (HF_SPARSE_ATTN_BACKEND=reference) for other sizes"
        )


def quantize_triton(x: torch.Tensor, fmt: str = "int4", group: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``naive.quantize``."""
    check_format(x, fmt, group)
    D = x.shape[-1]
    _check_pow2(D, group)
    flat = x.reshape(-1, D).contiguous()
    N = flat.shape[0]
    codes = torch.empty(*x.shape[:-1], D // 2, dtype=torch.uint8, device=x.device)
    scales = torch.empty(*x.shape[:-1], D // group, dtype=torch.uint8, device=x.device)
    _quantize_kernel[(triton.cdiv(N, ROWS),)](
        flat, codes, scales, N, D=D, GROUP=group, FP4=fmt == "fp4", BLOCK_R=ROWS
    )
    return codes, scales


def dequantize_triton(
    codes: torch.Tensor, scales: torch.Tensor, fmt: str = "int4", group: int = 16, dtype=torch.float32
) -> torch.Tensor:
    """Same contract as ``naive.dequantize``."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    D = codes.shape[-1] * 2
    _check_pow2(D, group)
    if scales.shape[-1] * group != D or codes.dtype != torch.uint8 or scales.dtype != torch.uint8:
        raise ValueError(
            f"codes [..., {codes.shape[-1]}] / scales [..., {scales.shape[-1]}] (uint8) do not match group {group}"
        )
    flat_codes = codes.reshape(-1, D // 2).contiguous()
    N = flat_codes.shape[0]
    out = torch.empty(*codes.shape[:-1], D, dtype=dtype, device=codes.device)
    _dequantize_kernel[(triton.cdiv(N, ROWS),)](
        flat_codes,
        scales.reshape(-1, D // group).contiguous(),
        out,
        N,
        D=D,
        GROUP=group,
        FP4=fmt == "fp4",
        BLOCK_R=ROWS,
    )
    return out


@torch.library.custom_op("sparse_prefill_kernels::kcache_quantize", mutates_args=())
def kcache_quantize_op(x: torch.Tensor, fmt: str, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.library`` op around the kernel, so ``torch.compile`` traces through it."""
    return quantize_triton(x, fmt, group)


@kcache_quantize_op.register_fake
def _(x, fmt, group):
    D = x.shape[-1]
    return x.new_empty(*x.shape[:-1], D // 2, dtype=torch.uint8), x.new_empty(
        *x.shape[:-1], D // group, dtype=torch.uint8
    )


@torch.library.custom_op("sparse_prefill_kernels::kcache_dequantize", mutates_args=())
def kcache_dequantize_op(
    codes: torch.Tensor, scales: torch.Tensor, fmt: str, group: int, dtype: torch.dtype
) -> torch.Tensor:
    """``torch.library`` op around the kernel, so ``torch.compile`` traces through it."""
    return dequantize_triton(codes, scales, fmt, group, dtype)


@kcache_dequantize_op.register_fake
def _(codes, scales, fmt, group, dtype):
    return codes.new_empty(*codes.shape[:-1], codes.shape[-1] * 2, dtype=dtype)
