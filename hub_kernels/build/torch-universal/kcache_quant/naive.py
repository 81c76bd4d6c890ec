# Generated from hf_sparse_attn/ops/kcache_quant/naive.py (hf-sparse-attn 0.1.0, ops 52b9c680fcd2); do not edit.
"""Reference 4-bit quantization of indexer keys: the spec for a decode-time indexer K-cache.

Each group of ``group`` consecutive values along the last dim shares one scale stored as an FP8
E4M3 byte (as in NVFP4: a power-of-two E8M0 scale wastes up to half the 4-bit range, which doubled
the error in our measurements); each value is a 4-bit code, two per byte. ``int4``: symmetric
integers -8..7, scale = amax / 7. ``fp4``: E2M1, magnitudes {0, 0.5, 1, 1.5, 2, 3, 4, 6} and a sign
bit, scale = amax / 6. With the default indexer (16 dims, one group) a key takes 9 bytes instead of
32 in bf16: 3.56x smaller.
"""

from __future__ import annotations

import torch

FORMATS = ("int4", "fp4")
FP4_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
_LARGEST = {"int4": 7.0, "fp4": 6.0}


def check_format(x: torch.Tensor, fmt: str, group: int) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if x.shape[-1] % group or group % 2:
        raise ValueError(f"the last dim ({x.shape[-1]}) must be a multiple of the (even) group size {group}")


def quantize(x: torch.Tensor, fmt: str = "int4", group: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes uint8 [..., D // 2], scales uint8 [..., D // group]) of x [..., D]."""
    check_format(x, fmt, group)
    g = x.float().unflatten(-1, (-1, group))
    amax = g.abs().amax(-1, keepdim=True)
    # amax x fp32(1 / largest), not amax / largest: torch divides by a scalar as a multiply by its
    # reciprocal on CUDA and exactly on the CPU, and the scale must not depend on the device.
    scale = (amax * (1.0 / _LARGEST[fmt])).clamp(min=2.0**-9, max=448.0).to(torch.float8_e4m3fn)
    scaled = g / scale.float()
    if fmt == "int4":
        codes = (torch.round(scaled).clamp(-8, 7) + 8).to(torch.uint8)
    else:
        values = FP4_VALUES.to(x.device)
        index = (scaled.abs()[..., None] - values).abs().argmin(-1)
        codes = (index | ((scaled < 0) & (index > 0)).long() << 3).to(torch.uint8)
    codes = codes.flatten(-2)
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return packed, scale[..., 0].view(torch.uint8)


def dequantize(
    codes: torch.Tensor, scales: torch.Tensor, fmt: str = "int4", group: int = 16, dtype=torch.float32
) -> torch.Tensor:
    """x [..., D] back from ``quantize``'s codes and scales."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    nibbles = torch.stack([codes & 0xF, codes >> 4], dim=-1).flatten(-2).long()
    if fmt == "int4":
        values = (nibbles - 8).float()
    else:
        magnitude = FP4_VALUES.to(codes.device)[nibbles & 7]
        values = torch.where(nibbles >= 8, -magnitude, magnitude)
    scale = scales.view(torch.float8_e4m3fn).float()[..., None]
    return (values.unflatten(-1, (-1, group)) * scale).flatten(-2).to(dtype)


def bytes_per_vector(dim: int, group: int = 16) -> int:
    """Storage of one quantized vector: dim / 2 code bytes + one scale byte per group."""
    return dim // 2 + dim // group
