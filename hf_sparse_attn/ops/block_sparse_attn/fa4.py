"""Block-sparse attention on FlashAttention-4 (``pip install flash-attn-4``, CuTe DSL; Hopper).

FA4 takes FlexAttention-style block lists: per query block, "full" key blocks that need no mask and
"mask" blocks that get one (here: the causal diagonal, through ``causal=True``). A ``BlockList`` maps
onto them directly: kept blocks left of the diagonal are full, the rest masked. On sm90 FA4's key
block must equal its kernel tile (``tile_n``), so ``fa4_key_block`` says which (block size, head dim)
pairs it runs and a key block larger than the tile is passed as consecutive tile-sized blocks.

FA4 is optional and imported only here, only when this backend runs. On sm80-class GPUs its
``block_sparse_tensors`` are ignored (dense output: flash-attention issue 2897), so only sm90 runs it.
"""

from __future__ import annotations

import functools
import importlib.util

import torch

from ..common import check_qk, num_blocks, sequence_lengths
from .naive import check_block_list

# (block_size, largest head dim) -> the key tile FA4 uses on sm90, measured on an H200 with 4.0.0b36:
# head dim <= 128 runs (128, 128) and (64, 64); head dim 256 runs only 64-key tiles.
_SM90_KEY_TILE = {(64, 128): 64, (128, 128): 128, (64, 256): 64, (128, 256): 64}
# Where ``auto`` prefers FA4 to the Triton kernel (H200, 128K tokens, 10% kept, bf16): at block 128 FA4
# ran 507 vs 410 TFLOP/s (D 128) and 564 vs 365 (D 256); at block 64 Triton was faster (459 vs 402,
# 511 vs 468), so block 64 stays on Triton unless HF_SPARSE_ATTN_BACKEND=fa4.
AUTO_BLOCK_SIZES = (128,)
# The diagonal blocks' causal mask: a CuTe ``mask_mod`` (kv_idx <= q_idx) on the masked blocks only, or
# FA4's own ``causal=True``. Both give identical outputs; the mask_mod was 3.6-7.3% faster on an H200
# at 128K tokens, block 128, 5-10% kept (597 vs 576 TFLOP/s D 128, 641 vs 616 D 256; speed_h200/).
CAUSAL_BY_MASK_MOD = True
_UNUSED = 2**31 - 1


@functools.lru_cache(maxsize=1)
def fa4_installed() -> bool:
    try:
        return importlib.util.find_spec("flash_attn.cute") is not None
    except ModuleNotFoundError:
        return False


def fa4_key_block(block_size: int, head_dim: int) -> int | None:
    """The key tile FA4 runs for this block size and head dim on sm90, or None if it runs none."""
    head_bucket = 128 if head_dim <= 128 else 256 if head_dim <= 256 else None
    return _SM90_KEY_TILE.get((block_size, head_bucket)) if head_bucket else None


def fa4_unsupported_reason(q: torch.Tensor, block_size: int) -> str | None:
    """Why FA4 cannot run this call (None: it can)."""
    if not fa4_installed():
        return "flash_attn.cute is not installed (pip install 'hf-sparse-attn[fa4]')"
    if not q.is_cuda:
        return f"q is on {q.device}, FA4 runs on CUDA only"
    if torch.cuda.get_device_capability(q.device)[0] != 9:
        return (
            f"{torch.cuda.get_device_name(q.device)} is not sm90 (Hopper): FA4's block lists are ignored on "
            "sm80 and untested here on sm100"
        )
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"FA4 takes float16 / bfloat16, got {q.dtype}"
    if fa4_key_block(block_size, q.shape[-1]) is None:
        return (
            f"FA4 on sm90 runs block_size 64 or 128 with head dim <= 128 or 256, got block_size {block_size} "
            f"and head dim {q.shape[-1]}"
        )
    return None


@functools.lru_cache(maxsize=1)
def _causal_mask_mod():
    import cutlass.cute as cute

    @cute.jit
    def causal(batch, head, q_idx, kv_idx, seqlen_info, aux_tensors):
        return kv_idx <= q_idx

    return causal


def fa4_block_lists(
    kv_num_blocks: torch.Tensor, kv_indices: torch.Tensor, query_heads: int, split: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mask_cnt, mask_idx, full_cnt, full_idx), int32 [B, H, nQ(, W)], of a block list [B, G, nQ(, W)]:
    blocks left of the diagonal are full, the diagonal (and anything right of it) masked; each key
    block becomes ``split`` consecutive key tiles. H is 1 for one shared list, else the query heads."""
    B, G, nq, W = kv_indices.shape
    slot = torch.arange(W, device=kv_indices.device)
    valid = slot < kv_num_blocks[..., None]
    idx = kv_indices.long()
    if split > 1:
        idx = (idx[..., None] * split + torch.arange(split, device=idx.device)).flatten(-2)
        valid = valid.repeat_interleave(split, -1)
    diagonal = torch.arange(nq, device=idx.device)[:, None] * split
    full = valid & (idx < diagonal)
    masked = valid & (idx >= diagonal)
    lists = []
    for keep in (masked, full):
        # scalars, not new tensors, and the full width: nothing here copies to or from the host
        packed = torch.sort(torch.where(keep, idx, _UNUSED), -1).values
        packed = torch.where(packed == _UNUSED, 0, packed)
        lists += [keep.sum(-1).to(torch.int32), packed.to(torch.int32)]
    if G > 1:
        head_group = torch.arange(query_heads, device=idx.device) // (query_heads // G)
        lists = [t[:, head_group].contiguous() for t in lists]
    return tuple(lists)


def block_sparse_attention_fa4(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_num_blocks: torch.Tensor,
    kv_indices: torch.Tensor,
    block_size: int,
    scale: float,
    seq_lens: torch.Tensor | None = None,
    mask_mod: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``naive.block_sparse_attention`` (q [B, Hq, S, D], k/v [B, Hkv, S, D]);
    ``mask_mod`` picks how the diagonal is masked (None: ``CAUSAL_BY_MASK_MOD``)."""
    from flash_attn.cute import flash_attn_func
    from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch

    B, Hq, S, D = check_qk(q, k)
    nq = num_blocks(S, block_size)
    check_block_list(kv_num_blocks, kv_indices, B, Hq, nq)
    why = fa4_unsupported_reason(q, block_size)
    if why is not None:
        raise ValueError(f"the FA4 backend cannot run this call: {why}")
    key_block = fa4_key_block(block_size, D)
    by_mask_mod = CAUSAL_BY_MASK_MOD if mask_mod is None else mask_mod
    mask_cnt, mask_idx, full_cnt, full_idx = fa4_block_lists(
        kv_num_blocks, kv_indices, Hq, block_size // key_block
    )
    sparse = BlockSparseTensorsTorch(
        mask_block_cnt=mask_cnt,
        mask_block_idx=mask_idx,
        full_block_cnt=full_cnt,
        full_block_idx=full_idx,
        block_size=(block_size, key_block),
    )
    out, lse = flash_attn_func(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        softmax_scale=scale,
        causal=not by_mask_mod,
        mask_mod=_causal_mask_mod() if by_mask_mod else None,
        block_sparse_tensors=sparse,
        return_lse=True,
    )[:2]
    out = out.transpose(1, 2)
    if seq_lens is not None:
        rows = torch.arange(S, device=q.device) < sequence_lengths(seq_lens, B, S, q.device)[:, None]
        out = out.masked_fill(~rows[:, None, :, None], 0.0)
        lse = lse.masked_fill(~rows[:, None, :], float("-inf"))
    return out, lse.float()
