"""Kernel entry points: the Triton kernels on CUDA; off CUDA, vectorized PyTorch (``<op>/cpu.py``) for
the two prefill ops and the plain-PyTorch references (``<op>/naive.py``, the spec) for the rest.

On CUDA, ``auto`` runs block-sparse attention on FlashAttention-4 where it is installed and faster
(Hopper, block 128, fp16 / bf16; ``block_sparse_attn/fa4.py``), else on the Triton kernel.

``HF_SPARSE_ATTN_BACKEND`` overrides the choice: ``reference`` forces the references everywhere
(debugging), ``cpu`` the vectorized ops, ``triton`` the kernels, which then also run off CUDA (under
``TRITON_INTERPRET=1``: how the CPU tests check them), ``fa4`` FlashAttention-4 for the attention
(an error where it cannot run) and Triton for the rest. Calls that autograd records take the
reference off CUDA; on CUDA the Triton block-sparse attention has a backward (``triton_bwd.py``),
FA4 is used for inference only, and the scoring ops run their differentiable reference.
"""

from __future__ import annotations

import os

import torch

from .block_sparse_attn import cpu as _bsa_cpu
from .block_sparse_attn import fa4 as _bsa_fa4
from .block_sparse_attn import naive as _bsa_naive
from .common import DENSE_FASTER_ABOVE, needs_grad, sequence_lengths
from .decode_mass import naive as _decode_mass_naive
from .kcache_quant import naive as _quant_naive
from .pooled_mass import cpu as _mass_cpu
from .pooled_mass import naive as _mass_naive
from .probe_mass import naive as _probe_naive
from .sparse_decode import naive as _decode_naive

BACKENDS = ("auto", "triton", "fa4", "cpu", "reference")


def backend_for(t: torch.Tensor) -> str:
    choice = os.environ.get("HF_SPARSE_ATTN_BACKEND", "auto")
    if choice not in BACKENDS:
        raise ValueError(f"HF_SPARSE_ATTN_BACKEND must be one of {BACKENDS}, got {choice!r}")
    if choice == "auto":
        return "triton" if t.is_cuda else "cpu"
    if choice == "fa4":
        if not t.is_cuda:
            raise ValueError(
                f"HF_SPARSE_ATTN_BACKEND=fa4 with a tensor on {t.device}: FlashAttention-4 runs on CUDA only; "
                "use HF_SPARSE_ATTN_BACKEND=auto"
            )
        return "triton"  # FA4 serves block-sparse attention only; the other ops stay on Triton
    if choice == "cpu" and t.is_cuda:
        raise ValueError(
            "HF_SPARSE_ATTN_BACKEND=cpu with a CUDA tensor: the vectorized ops use PyTorch's CPU attention "
            "kernel; use HF_SPARSE_ATTN_BACKEND=auto (Triton on CUDA) or reference"
        )
    if choice == "triton" and not t.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"HF_SPARSE_ATTN_BACKEND=triton with a tensor on {t.device}: Triton kernels run off CUDA only "
            "under its interpreter; set TRITON_INTERPRET=1 before importing triton, or use "
            "HF_SPARSE_ATTN_BACKEND=auto (the reference off CUDA)"
        )
    return choice


def attention_backend(q: torch.Tensor, block_size: int, grad: bool = False) -> str:
    """Which implementation ``block_sparse_attention`` runs for this call: "cpu", "reference", "fa4"
    or "triton" (the one place that decides it)."""
    backend = backend_for(q)
    if backend == "cpu":
        return "cpu" if not grad and _bsa_cpu.fused_cpu_attention_available() else "reference"
    if backend != "triton":
        return backend
    choice = os.environ.get("HF_SPARSE_ATTN_BACKEND", "auto")
    if grad and choice == "fa4":
        raise NotImplementedError(
            "HF_SPARSE_ATTN_BACKEND=fa4 has no validated backward (FlashAttention-4's block-sparse backward "
            "returned wrong gradients on sm90 before: flash-attention issue 2623); train with "
            "HF_SPARSE_ATTN_BACKEND=auto or triton, whose backward is tested against the reference"
        )
    auto_fa4 = (
        choice == "auto"
        and not grad
        and not torch.compiler.is_compiling()  # FA4 is no torch.library op: compiled graphs run Triton
        and block_size in _bsa_fa4.AUTO_BLOCK_SIZES
        and _bsa_fa4.fa4_unsupported_reason(q, block_size) is None
    )
    return "fa4" if choice == "fa4" or auto_fa4 else "triton"


def dense_faster_above(q: torch.Tensor, block_size: int) -> float:
    """The kept share of the causal blocks above which dense attention beats this call's sparse path."""
    return DENSE_FASTER_ABOVE[attention_backend(q, block_size)]


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_num_blocks: torch.Tensor,
    kv_indices: torch.Tensor,
    block_size: int,
    scale: float,
    seq_lens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-sparse causal GQA attention; contract in ``block_sparse_attn/naive.py``."""
    backend = attention_backend(q, block_size, needs_grad(q, k, v))
    if backend == "cpu":
        return _bsa_cpu.block_sparse_attention_cpu(
            q, k, v, kv_num_blocks, kv_indices, block_size, scale, seq_lens
        )
    if backend == "reference":
        return _bsa_naive.block_sparse_attention(
            q, k, v, kv_num_blocks, kv_indices, block_size, scale, seq_lens
        )
    if backend == "fa4":
        return _bsa_fa4.block_sparse_attention_fa4(
            q, k, v, kv_num_blocks, kv_indices, block_size, scale, seq_lens
        )
    from .block_sparse_attn.triton import block_sparse_attn_fwd

    return block_sparse_attn_fwd(
        q,
        k,
        v,
        kv_num_blocks,
        kv_indices,
        sequence_lengths(seq_lens, q.shape[0], q.shape[2], q.device, torch.int32),
        block_size,
        scale,
    )


def pooled_attention_mass(
    q: torch.Tensor,
    k: torch.Tensor,
    block_size: int,
    scale: float,
    groups: int,
    seq_lens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Block-pooled causal attention mass; contract in ``pooled_mass/naive.py``."""
    backend = backend_for(q)
    if backend == "cpu" and not needs_grad(q, k):
        return _mass_cpu.pooled_attention_mass_cpu(q, k, block_size, scale, groups, seq_lens)
    if backend != "triton" or needs_grad(q, k):
        return _mass_naive.pooled_attention_mass(q, k, block_size, scale, groups, seq_lens)
    from .pooled_mass.triton import pooled_attention_mass_op

    return pooled_attention_mass_op(
        q,
        k,
        sequence_lengths(seq_lens, q.shape[0], q.shape[2], q.device, torch.int32),
        block_size,
        scale,
        groups,
    )


def row_probe_mass(
    q: torch.Tensor,
    k: torch.Tensor,
    block_size: int,
    scale: float,
    groups: int,
    seq_lens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dense attention mass of each query block's last valid query; contract in ``probe_mass/naive.py``."""
    if backend_for(q) != "triton":
        return _probe_naive.row_probe_mass(q, k, block_size, scale, groups, seq_lens)
    from .probe_mass.triton import row_probe_mass_op

    return row_probe_mass_op(
        q,
        k,
        sequence_lengths(seq_lens, q.shape[0], q.shape[2], q.device, torch.int32),
        block_size,
        scale,
        groups,
    )


def decode_block_mass(
    q_idx: torch.Tensor,
    k_idx: torch.Tensor,
    block_size: int,
    scale: float,
    key_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Indexer mass of one decode query row per key block; contract in ``decode_mass/naive.py``."""
    if backend_for(k_idx) != "triton":
        return _decode_mass_naive.decode_block_mass(q_idx, k_idx, block_size, scale, key_valid)
    from .decode_mass.triton import decode_block_mass_op

    return decode_block_mass_op(q_idx, k_idx, block_size, scale, key_valid)


def sparse_decode_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_num_blocks: torch.Tensor,
    kv_indices: torch.Tensor,
    block_size: int,
    scale: float,
    seq_lens: torch.Tensor | None = None,
    key_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step over the selected cache blocks; contract in ``sparse_decode/naive.py``."""
    if backend_for(q) != "triton":
        return _decode_naive.sparse_decode_attention(
            q, k, v, kv_num_blocks, kv_indices, block_size, scale, seq_lens, key_mask
        )
    from .sparse_decode.triton import sparse_decode_fwd

    return sparse_decode_fwd(
        q,
        k,
        v,
        kv_num_blocks,
        kv_indices,
        sequence_lengths(seq_lens, q.shape[0], k.shape[2], q.device, torch.int32),
        block_size,
        scale,
        key_mask,
    )


def quantize_kcache(x: torch.Tensor, fmt: str = "int4", group: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """4-bit codes + FP8 group scales of indexer keys; contract in ``kcache_quant/naive.py``."""
    if backend_for(x) != "triton":
        return _quant_naive.quantize(x, fmt, group)
    from .kcache_quant.triton import kcache_quantize_op

    return kcache_quantize_op(x, fmt, group)


def dequantize_kcache(
    codes: torch.Tensor, scales: torch.Tensor, fmt: str = "int4", group: int = 16, dtype=torch.float32
) -> torch.Tensor:
    """Indexer keys back from ``quantize_kcache``; contract in ``kcache_quant/naive.py``."""
    if backend_for(codes) != "triton":
        return _quant_naive.dequantize(codes, scales, fmt, group, dtype)
    from .kcache_quant.triton import kcache_dequantize_op

    return kcache_dequantize_op(codes, scales, fmt, group, dtype)


__all__ = [
    "BACKENDS",
    "attention_backend",
    "backend_for",
    "dense_faster_above",
    "block_sparse_attention",
    "decode_block_mass",
    "dequantize_kcache",
    "pooled_attention_mass",
    "quantize_kcache",
    "row_probe_mass",
    "sparse_decode_attention",
]
