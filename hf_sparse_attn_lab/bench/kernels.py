"""`hf-sparse-attn bench kernels`: our block-sparse kernels vs SDPA (flash, cuDNN), FlexAttention and,
where installed, FlashAttention-4 (dense causal, and block-sparse through our ``BlockList`` adapter).

Every kernel is checked against a reference on the same inputs before it is timed, and a kernel
that fails the check gets no speed. The identical block list is given to our Triton kernel, to FA4
(full blocks + the masked diagonal) and, converted to a BlockMask (diagonal blocks partial with a
causal mask_mod, the rest full), to FlexAttention. Effective TFLOP/s counts only the computed
(selected, causal) blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch

from hf_sparse_attn.ops.block_sparse_attn import fa4
from hf_sparse_attn.runtime.config import SparseAttentionConfig
from hf_sparse_attn.runtime.selection import BlockList, select_blocks

SHAPES = {"qwen3-8b": (32, 8, 128), "qwen3.5-9b": (16, 4, 256)}
CHECK_TOL = {torch.bfloat16: 2e-2, torch.float16: 5e-3}


@dataclass
class Row:
    shape: str
    seq_len: int
    density: float
    method: str
    ms: float | None
    tflops: float | None
    speedup_vs_cudnn: float | None
    rel_err: float | None
    note: str = ""


def _bench(fn) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).norm() / ref.float().norm())


def random_block_list(B: int, S: int, block: int, density: float, device: str, seed: int = 0) -> BlockList:
    """Sink + 2 local blocks + uniformly random causal blocks up to ``density`` per query block."""
    nb = math.ceil(S / block)
    g = torch.Generator(device=device).manual_seed(seed)
    scores = torch.rand(B, 1, nb, nb, generator=g, device=device)
    cfg = SparseAttentionConfig(block_size=block, density=density, sink_blocks=1, local_blocks=2)
    return select_blocks(scores, cfg)


def computed_pairs(blocks: BlockList) -> int:
    return int(blocks.kv_num_blocks.sum())


def flex_block_mask(blocks: BlockList, S: int):
    """The same block list as a FlexAttention BlockMask: diagonal blocks partial (causal), others full."""
    from torch.nn.attention.flex_attention import BlockMask
    from torch.nn.functional import pad

    num, idx = blocks.kv_num_blocks, blocks.kv_indices
    nb = num.shape[-1]
    qb = torch.arange(nb, device=num.device)
    slots = torch.arange(idx.shape[-1], device=num.device)
    used = slots < num[..., None]
    is_diag = (idx == qb[:, None]) & used
    full_used = used & ~is_diag
    full_num = full_used.sum(-1).to(torch.int32)
    full_idx = torch.sort(torch.where(full_used, idx, nb), dim=-1).values
    full_idx = pad(torch.where(full_idx < nb, full_idx, 0), (0, nb - idx.shape[-1])).to(torch.int32)
    part_num = is_diag.sum(-1).to(torch.int32)
    part_idx = pad(torch.where(is_diag.any(-1), qb, 0)[..., None], (0, nb - 1)).to(torch.int32)

    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    return BlockMask.from_kv_blocks(
        part_num,
        part_idx.contiguous(),
        full_num,
        full_idx.contiguous(),
        BLOCK_SIZE=blocks.block_size,
        mask_mod=causal,
        seq_lengths=(S, S),
    )


def _timed(
    rows, progress, shape, S, density, method, fn, ref, flops, cudnn_ms, dtype
) -> tuple[float | None, torch.Tensor]:
    """Check ``fn()`` against ``ref``; time it only if it passes; append the row."""
    try:
        out = fn()
    except RuntimeError as e:
        rows.append(Row(shape, S, density, method, None, None, None, None, f"failed to run: {str(e)[:100]}"))
        if progress:
            progress(rows[-1])
        return None, None
    err = rel_err(out, ref)
    ok = err < CHECK_TOL[dtype]
    ms = _bench(fn) if ok else None
    rows.append(
        Row(
            shape,
            S,
            density,
            method,
            ms,
            flops / ms / 1e9 if ms else None,
            cudnn_ms / ms if ms and cudnn_ms else None,
            err,
            "" if ok else "FAILED correctness check: not timed",
        )
    )
    if progress:
        progress(rows[-1])
    return ms, out


def _sdpa(q, k, v, scale, backend):
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel(backend):
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=scale, enable_gqa=True
        )


def _one_length(rows, progress, shape, S, densities, block, dtype, flex) -> None:
    from torch.nn.attention import SDPBackend

    Hq, Hkv, D = SHAPES[shape]
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, h, S, D, device="cuda", dtype=dtype) for h in (Hq, Hkv, Hkv))
    scale = D**-0.5
    dense_flops = 4 * Hq * D * (S * (S + 1) / 2)
    ref = _sdpa(q, k, v, scale, SDPBackend.FLASH_ATTENTION)
    cudnn_ms = None
    for name, backend in (
        ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION),
        ("sdpa-flash", SDPBackend.FLASH_ATTENTION),
    ):
        try:
            ms, _ = _timed(
                rows,
                progress,
                shape,
                S,
                1.0,
                name,
                partial(_sdpa, q, k, v, scale, backend),
                ref,
                dense_flops,
                cudnn_ms,
                dtype,
            )
        except RuntimeError as e:
            rows.append(Row(shape, S, 1.0, name, None, None, None, None, f"unavailable: {str(e)[:80]}"))
            ms = None
        cudnn_ms = ms if name == "sdpa-cudnn" else cudnn_ms
    if fa4.fa4_installed():
        _timed(
            rows,
            progress,
            shape,
            S,
            1.0,
            "fa4-dense",
            partial(fa4_dense, q, k, v, scale),
            ref,
            dense_flops,
            cudnn_ms,
            dtype,
        )
    flex_opts = {"kernel_options": {"BLOCK_M": block, "BLOCK_N": block}} if block < 128 else {}
    if flex is not None:
        causal = flex_block_mask(random_block_list(1, S, 128, 1.0, "cuda"), S)
        _timed(
            rows,
            progress,
            shape,
            S,
            1.0,
            "flex-causal",
            partial(flex, q, k, v, block_mask=causal, scale=scale, enable_gqa=True),
            ref,
            dense_flops,
            cudnn_ms,
            dtype,
        )
    for density in densities:
        blocks = random_block_list(1, S, block, density, "cuda")
        flops = 4 * Hq * D * computed_pairs(blocks) * block * block
        actual = float(blocks.density().mean())
        ours = partial(_ours, q, k, v, blocks, scale)
        if flex is None:
            check = ref if density >= 1.0 else block_sparse_attention_reference(q, k, v, blocks, scale)
            _timed(rows, progress, shape, S, actual, f"ours-bs{block}", ours, check, flops, cudnn_ms, dtype)
            continue
        fl = partial(
            flex, q, k, v, block_mask=flex_block_mask(blocks, S), scale=scale, enable_gqa=True, **flex_opts
        )
        check = ref if density >= 1.0 else fl()
        _, our_out = _timed(
            rows, progress, shape, S, actual, f"ours-bs{block}", ours, check, flops, cudnn_ms, dtype
        )
        if density < 1.0:
            check = (
                our_out if our_out is not None else block_sparse_attention_reference(q, k, v, blocks, scale)
            )
        _timed(rows, progress, shape, S, actual, f"flex-bs{block}", fl, check, flops, cudnn_ms, dtype)
        if fa4.fa4_unsupported_reason(q, block) is None:
            fa = partial(_fa4_sparse, q, k, v, blocks, scale)
            _timed(rows, progress, shape, S, actual, f"fa4-bs{block}", fa, check, flops, cudnn_ms, dtype)


def _ours(q, k, v, blocks: BlockList, scale: float) -> torch.Tensor:
    from hf_sparse_attn.ops.block_sparse_attn.triton import block_sparse_attention_triton

    return block_sparse_attention_triton(
        q, k, v, blocks.kv_num_blocks, blocks.kv_indices, blocks.block_size, scale
    )[0]


def _fa4_sparse(q, k, v, blocks: BlockList, scale: float) -> torch.Tensor:
    return fa4.block_sparse_attention_fa4(
        q, k, v, blocks.kv_num_blocks, blocks.kv_indices, blocks.block_size, scale
    )[0]


def fa4_dense(q, k, v, scale: float | None) -> torch.Tensor:
    """Dense causal FlashAttention-4 of [B, H, S, D] q / k / v, [B, H, S, D] out (a view of [B, S, H, D])."""
    from flash_attn.cute import flash_attn_func

    out = flash_attn_func(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale, causal=True
    )
    return (out[0] if isinstance(out, tuple) else out).transpose(1, 2)


def block_sparse_attention_reference(q, k, v, blocks: BlockList, scale: float) -> torch.Tensor:
    from hf_sparse_attn.ops.block_sparse_attn.naive import block_sparse_attention as naive

    return naive(q, k, v, blocks.kv_num_blocks, blocks.kv_indices, blocks.block_size, scale)[0]


def run(
    shapes: list[str],
    seq_lens: list[int],
    densities: list[float],
    block: int = 128,
    dtype: torch.dtype = torch.bfloat16,
    with_flex: bool = True,
    progress=None,
) -> list[Row]:
    """Rows for every (shape, length): SDPA cuDNN / flash, Flex causal, then ours and Flex per density."""
    flex = None
    if with_flex:
        from torch.nn.attention.flex_attention import flex_attention

        flex = torch.compile(flex_attention, dynamic=False)
    rows: list[Row] = []
    for shape in shapes:
        for S in seq_lens:
            _one_length(rows, progress, shape, S, densities, block, dtype, flex)
            torch.cuda.empty_cache()
    return rows


SELECTION_METHODS = {
    "indexer": {"density": 0.1},
    "indexer_topp": {"top_p": 0.9},
    "indexer_dual_topp": {"top_p": 0.9, "layer_top_p": 0.8},
    "retrieval_heads": {"density": 0.1, "retrieval_heads": [[0, 0], [0, 3]]},
    "patterns": {"selector": "patterns", "density": 0.1},
    "patterns_horizontal": {"selector": "patterns", "density": 0.1, "horizontal_threshold": 0.8},
}


class LayerStub(torch.nn.Module):
    """The attributes the attention path (``layer_selection``, ``sparse_decode_step``) reads from an
    attention module: a bf16 CUDA indexer for one layer of the given shape."""

    def __init__(self, Hq: int, Hkv: int, D: int, cfg: SparseAttentionConfig) -> None:
        from hf_sparse_attn.runtime.indexer import Indexer

        super().__init__()
        self.layer_idx, self.scaling = 0, D**-0.5
        self.indexer = Indexer(Hq, Hkv, D, cfg, layer_idx=0).to("cuda", torch.bfloat16)


def selection_cost(seq_len: int, shape: str = "qwen3-8b", block: int = 64, method: str = "indexer") -> dict:
    """One layer's selection as the attention function runs it (selector scores, budget rule, dense
    rows / heads) at ``seq_len``: time, kept density and extra memory; scoring alone timed beside."""
    from hf_sparse_attn.runtime.attention import layer_block_scores, layer_selection

    Hq, Hkv, D = SHAPES[shape]
    cfg = SparseAttentionConfig(block_size=block, **SELECTION_METHODS[method])
    layer = LayerStub(Hq, Hkv, D, cfg)
    q = torch.randn(1, Hq, seq_len, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, Hkv, seq_len, D, device="cuda", dtype=torch.bfloat16)
    lens = torch.full((1,), seq_len, device="cuda")

    @torch.no_grad()
    def step():
        return layer_selection(layer, q, k)

    blocks = step()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak_extra = torch.cuda.max_memory_allocated() - base
    with torch.no_grad():
        scoring_ms = _bench(lambda: layer_block_scores(layer, q, k, lens))
    return {
        "shape": shape,
        "method": method,
        "seq_len": seq_len,
        "block": block,
        "density": float(blocks.density().mean()),
        "total_ms": _bench(step),
        "scoring_ms": scoring_ms,
        "peak_extra_mib": peak_extra / 2**20,
        "s_by_s_bf16_mib": seq_len * seq_len * 2 / 2**20,
    }
