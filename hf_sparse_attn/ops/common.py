"""Shape checks and block arithmetic shared by every op."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LOG2E = 1.4426950408889634  # the Triton kernels exponentiate with exp2: they take scale x log2(e)


# Kept share of the causal blocks above which dense attention is faster than the block-sparse path
# (scoring included), per backend. Triton: an H200 at 128K tokens ran every block in 347 ms against
# SDPA cuDNN's 264 ms (break-even 0.76). CPU: the bundled proxy's shape broke even at 0.3 (4K tokens)
# to 0.5 (8K). FA4 at full density was faster than SDPA: only a budget that keeps everything goes dense.
DENSE_FASTER_ABOVE = {"triton": 0.75, "cpu": 0.5, "fa4": 1.0, "reference": 1.0}


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd will record a call on ``tensors`` (then the inference-only paths step aside)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def num_blocks(length: int, block_size: int) -> int:
    return (length + block_size - 1) // block_size


def sequence_lengths(
    seq_lens: torch.Tensor | None,
    batch: int,
    seq_len: int,
    device: torch.device,
    dtype: torch.dtype = torch.long,
) -> torch.Tensor:
    """Valid length of each (right-padded) row: ``seq_lens`` on ``device`` as ``dtype``, or all ``seq_len``."""
    if seq_lens is None:
        return torch.full((batch,), seq_len, dtype=dtype, device=device)
    return seq_lens.to(device=device, dtype=dtype)


def unit_last_stride(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors with unit stride along the last dim, which the Triton kernels index as 1: a view
    that has it passes as is, any other is copied."""
    return tuple(t if t.stride(-1) == 1 else t.contiguous() for t in tensors)


def stacked_heads(start: int, rep: int, group_heads: int) -> int:
    """Query heads one program stacks: the largest power of two <= ``start`` dividing both the heads per
    kv head (``rep``) and per selection group, so stacked heads share their K/V tiles and block list."""
    heads = max(1, start)
    while heads > 1 and (rep % heads or group_heads % heads):
        heads //= 2
    return heads


def check_scale(scale: float) -> None:
    """The Triton kernels take row maxima of unscaled scores, which is only valid for a positive scale."""
    if not scale > 0:
        raise ValueError(f"the softmax scale must be positive for the Triton kernels, got {scale}")


def check_groups(heads: int, groups: int) -> None:
    if heads % groups:
        raise ValueError(f"query heads ({heads}) must be a multiple of the selection groups ({groups})")


def check_mass_kernel_inputs(q: torch.Tensor, k: torch.Tensor, head_dim: int) -> None:
    """The pooled-mass and row-probe kernels take q / k of one dtype and a power-of-two head dim in [16, 256]."""
    if k.dtype != q.dtype:
        raise ValueError(f"q and k dtypes differ: {q.dtype} vs {k.dtype}")
    if head_dim < 16 or head_dim & (head_dim - 1) or head_dim > 256:
        raise ValueError(
            f"head dim {head_dim} is not supported by the Triton kernel (a power of two in [16, 256])"
        )


def check_qk(q: torch.Tensor, k: torch.Tensor) -> tuple[int, int, int, int]:
    """Validate q [B, H, S, d] / k [B, Hk, S, d] and return (B, H, S, d)."""
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(
            f"q and k must be 4D [batch, heads, seq, dim], got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    _check_float(q=q, k=k)
    B, H, S, d = q.shape
    if k.shape[0] != B or k.shape[2] != S or k.shape[3] != d:
        raise ValueError(
            f"k {tuple(k.shape)} does not match q {tuple(q.shape)} in batch, sequence or head dim"
        )
    _check_gqa(H, k.shape[1])
    return B, H, S, d


def _check_float(**tensors: torch.Tensor) -> None:
    for name, t in tensors.items():
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")


def _check_gqa(query_heads: int, kv_heads: int) -> None:
    if query_heads % kv_heads:
        raise ValueError(f"query heads ({query_heads}) must be a multiple of key heads ({kv_heads})")


def check_decode(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_num_blocks: torch.Tensor, kv_indices: torch.Tensor
) -> tuple[int, int, int, int]:
    """Validate a decode step (q [B, Hq, 1, D], cache k/v [B, Hkv, L, D], block list [B, G] / [B, G, W]);
    return (B, Hq, L, D)."""
    if q.dim() != 4 or k.dim() != 4 or q.shape[2] != 1:
        raise ValueError(
            f"decode expects q [batch, heads, 1, dim] and k [batch, kv_heads, cache_len, dim], got "
            f"{tuple(q.shape)} and {tuple(k.shape)}"
        )
    _check_float(q=q, k=k, v=v)
    B, Hq, _, D = q.shape
    if k.shape[0] != B or k.shape[3] != D or v.shape != k.shape:
        raise ValueError(f"k {tuple(k.shape)} / v {tuple(v.shape)} do not match q {tuple(q.shape)}")
    _check_gqa(Hq, k.shape[1])
    if kv_num_blocks.dim() != 2 or kv_indices.dim() != 3 or kv_indices.shape[:2] != kv_num_blocks.shape:
        raise ValueError(
            f"decode block lists must be kv_num_blocks [B, G] and kv_indices [B, G, W], got "
            f"{tuple(kv_num_blocks.shape)} and {tuple(kv_indices.shape)}"
        )
    G = kv_num_blocks.shape[1]
    if kv_num_blocks.shape[0] != B or k.shape[1] % G:
        raise ValueError(
            f"block list {tuple(kv_num_blocks.shape)} does not fit batch {B} and {k.shape[1]} kv heads "
            "(the selection groups must divide the kv heads)"
        )
    return B, Hq, k.shape[2], D


def check_key_mask(
    key_mask: torch.Tensor, batch: int, cache_len: int, name: str = "key_mask"
) -> torch.Tensor:
    """A decode key mask must be bool [B, L] (True = the row may attend to that cached key)."""
    if key_mask.dtype != torch.bool or tuple(key_mask.shape) != (batch, cache_len):
        raise ValueError(
            f"{name} must be bool [batch, cache_len] = [{batch}, {cache_len}], got {key_mask.dtype} "
            f"{tuple(key_mask.shape)}"
        )
    return key_mask
