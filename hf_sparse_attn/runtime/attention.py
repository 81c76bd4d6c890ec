"""The ``"sparse_prefill"`` attention function and its mask function, registered with transformers.

Which path a call takes (decided from shapes and the mask, since no cache position reaches us):

- sparse: a prefill (query length == key length, no past) of at least ``min_sparse_len`` tokens on a
  layer that has an indexer: selector block scores -> ``select_blocks`` -> block-sparse kernel.
- dense + observed: inside ``distill.distillation_forward`` (the indexer's ``observer`` records
  teacher / student terms from the layer's q/k; the output is the dense one).
- sparse decode (``sparse_decode=True``): a one-token step over a cache of at least
  ``min_sparse_len`` keys (for a static cache: its capacity), with no mask or a one-row key mask
  (static caches, left-padded batches, and the decode masks transformers 5.17 materializes under
  ``torch.compile``): indexer K-cache scores -> ``select_decode_blocks`` -> decode kernel (see
  ``decode``). Prefills then also fill the layer's indexer K-cache.
- dense, identical to ``sdpa``: a ``density`` / ``top_k`` budget that keeps at least the share of the
  causal blocks above which dense is faster on this backend (``ops.dense_faster_above``: all of them
  on FA4, 75% on Triton, 50% on the CPU ops; a budget keeping every block gives the same result),
  decode steps (without ``sparse_decode``, or short ones, or with any
  other mask), chunked prefill, static-cache prefill, prompts shorter
  than ``min_sparse_len``, layers in ``dense_layers`` / sliding-window layers (indexer is None), and
  non-causal modules (vision towers). Each such reason is logged once at debug level.

The mask function returns ``None`` (causal, no padding) or, for padded prefills, a compact key mask
[B, 1, 1, S] (causal implied, never an S x S tensor); every other case gets the stock sdpa mask.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed.nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import (
    AttentionMaskInterface,
    causal_mask_function,
    prepare_padding_mask,
    sdpa_mask,
)

from .. import ops
from .decode import sparse_decode_step, store_prefill_keys
from .indexer import tensor_parallel_rank
from .log import debug_once, warning_once
from .oracle import oracle_block_scores
from .padding import PaddingLayout
from .patterns import pattern_block_scores
from .selection import (
    BlockList,
    budget_kept_fraction,
    forced_blocks_fill_budget,
    select_blocks,
    with_dense_groups,
    with_dense_rows,
)

ATTENTION_NAME = "sparse_prefill"
# A density / top_k budget that keeps more of the causal blocks than the sparse path can win on (per
# backend: ops.dense_faster_above; always at 100%, where the result is the same) runs sdpa; switched
# off inside ``sparse_at_every_budget``.
DENSE_WHEN_FASTER = True
FORCED_BLOCKS_FILL_BUDGET = "forced blocks fill the budget"  # the warning's once-per-process reason


def _debug_once(reason: str) -> None:
    debug_once(f"sparse_prefill: dense path ({reason})")


def sparse_prefill_mask(*args, **kwargs) -> torch.Tensor | None:
    """Mask function for ``AttentionMaskInterface``: compact key mask for plain padded prefills."""
    q_length, kv_length = kwargs.get("q_length"), kwargs.get("kv_length")
    plain_prefill = (
        isinstance(q_length, int)
        and q_length > 1
        and q_length == kv_length
        and isinstance(kwargs.get("q_offset", 0), int)
        and kwargs.get("q_offset", 0) == 0
        and kwargs.get("kv_offset", 0) == 0
        and kwargs.get("mask_function", causal_mask_function) is causal_mask_function
        and kwargs.get("local_size") is None
        and not args
    )
    if not plain_prefill:
        return sdpa_mask(*args, **kwargs)
    padding = prepare_padding_mask(kwargs.get("attention_mask"), kv_length, 0)
    if padding is None or bool(padding.all()):
        return None
    return padding.bool()[:, None, None, :]


def _is_compact(mask: torch.Tensor | None, q_len: int) -> bool:
    return mask is not None and mask.dim() == 4 and mask.shape[-2] == 1 and q_len > 1


def dense_attention(module, query, key, value, attention_mask, **kwargs) -> tuple[torch.Tensor, None]:
    """Stock sdpa; a compact prefill mask is expanded to the causal + padding mask sdpa builds itself."""
    q_len, kv_len = query.shape[2], key.shape[2]
    if _is_compact(attention_mask, q_len):
        qpos = torch.arange(q_len, device=query.device)[:, None] + (kv_len - q_len)
        causal = torch.arange(kv_len, device=query.device)[None, :] <= qpos
        attention_mask = attention_mask & causal[None, None]
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def layer_block_scores(
    module: torch.nn.Module, q: torch.Tensor, k: torch.Tensor, seq_lens: torch.Tensor
) -> torch.Tensor:
    """Block scores from the layer's configured selector (see ``SparseAttentionConfig``)."""
    indexer = module.indexer
    cfg = indexer.config
    if cfg.selector == "random":
        B, nb = q.shape[0], -(-q.shape[2] // cfg.block_size)
        g = torch.Generator(device=q.device).manual_seed(int(module.layer_idx))
        return torch.rand(B, cfg.indexer_heads, nb, nb, generator=g, device=q.device)
    if cfg.selector == "indexer":
        q_idx, k_idx = indexer(q, k)
        if cfg.sparse_decode:
            store_prefill_keys(indexer, k_idx, k)
        return indexer.block_scores_from(q_idx, k_idx, seq_lens)
    if cfg.selector == "patterns":
        scores = pattern_block_scores(
            q, k, cfg.block_size, module.scaling, cfg.indexer_heads, seq_lens, cfg.probe_queries
        )
    else:
        scores = oracle_block_scores(q, k, cfg.block_size, module.scaling, cfg.indexer_heads, seq_lens)
    return _mean_over_all_heads(module, q, scores)


def _mean_over_all_heads(module: torch.nn.Module, q: torch.Tensor, head_mean: torch.Tensor) -> torch.Tensor:
    """A mean over the local query heads -> the mean over all heads (all-reduce under tensor parallel)."""
    shards = module.indexer.num_heads // q.shape[1]
    if shards == 1:
        return head_mean
    tensor_parallel_rank(shards, module.indexer.config.indexer_heads)
    return torch.distributed.nn.functional.all_reduce(head_mean) / shards


def sparse_prefill_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """``AttentionInterface`` function: [B, H, S, D] states in, ([B, S, Hq, D], None) out.

    transformers keeps one function per name for the whole process, and a published repo's modeling
    file registers its own copy on import; so each layer runs the copy that attached its indexer
    (``module.sparse_prefill_attention``), whichever copy was registered last."""
    own = getattr(module, "sparse_prefill_attention", None)
    if own is not None and own is not sparse_prefill_attention:
        return own(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if not hasattr(module, "indexer"):
        if not getattr(module, "is_causal", True):
            _debug_once("non-causal module")
            return dense_attention(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
            )
        raise RuntimeError(
            f"{type(module).__name__} (layer {getattr(module, 'layer_idx', '?')}) has no indexer: call "
            "hf_sparse_attn.attach_indexer(model, config) or load_indexer(model, path) before running "
            "attn_implementation='sparse_prefill', or load a sparse-prefill repo (trust_remote_code=True). Without "
            "a trained indexer, SparseAttentionConfig(selector='patterns') runs (training-free vertical + slash "
            "estimate)"
        )
    indexer = module.indexer
    if indexer is not None and indexer.observer is not None:
        indexer.observer(module, query, key, attention_mask)
        return dense_attention(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    q_len, kv_len = query.shape[2], key.shape[2]
    sparse_decode = indexer is not None and indexer.config.sparse_decode
    reason = None
    if indexer is None:
        reason = "dense layer"
    elif q_len == 1 and kv_len > 1 and sparse_decode:
        key_valid = _decode_key_mask(attention_mask, query.shape[0], kv_len)
        if attention_mask is not None and key_valid is None:
            reason = "decode with a mask that is not one key row per sequence"
        elif kv_len < indexer.config.min_sparse_len:
            reason = "decode over a cache shorter than min_sparse_len"
        else:
            return sparse_decode_step(
                module, query, key, value, softmax_scale(query, scaling), key_valid
            ), None
    elif q_len != kv_len:
        reason = "decode or chunked prefill"
    elif q_len < indexer.config.min_sparse_len:
        reason = "prompt shorter than min_sparse_len"
    elif attention_mask is not None and not _is_compact(attention_mask, q_len):
        reason = "non-causal or cache-sized mask"
    elif DENSE_WHEN_FASTER and _dense_is_faster(indexer.config, query, q_len):
        reason = "the budget keeps more blocks than the sparse path is faster for (ops.dense_faster_above)"
    if reason is not None:
        _debug_once(reason)
        if sparse_decode and q_len == kv_len:
            store_prefill_keys(indexer, None, key)
        return dense_attention(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if dropout > 0.0:
        raise ValueError(
            "sparse_prefill does not support attention dropout; set config.attention_dropout = 0"
        )
    scaling = softmax_scale(query, scaling)
    layout = PaddingLayout.from_attention_mask(attention_mask, query)
    q, k, v = layout.to_right(query), layout.to_right(key), layout.to_right(value)
    blocks = layer_selection(module, q, k, layout.seq_lens)
    indexer.last_selection = blocks
    out, _ = ops.block_sparse_attention(
        q, k, v, blocks.kv_num_blocks, blocks.kv_indices, blocks.block_size, scaling, layout.seq_lens
    )
    return layout.to_original(out).transpose(1, 2).contiguous(), None


def _dense_is_faster(config, query: torch.Tensor, q_len: int) -> bool:
    kept = budget_kept_fraction(config, q_len)
    return kept is not None and kept >= ops.dense_faster_above(query, config.block_size)


@contextlib.contextmanager
def sparse_at_every_budget():
    """Run the sparse path also where a budget keeps enough blocks for dense to be faster: for runs that
    measure the selection or the kernels themselves (eval rows, benchmark gates)."""
    global DENSE_WHEN_FASTER
    saved, DENSE_WHEN_FASTER = DENSE_WHEN_FASTER, False
    try:
        yield
    finally:
        DENSE_WHEN_FASTER = saved


def _decode_key_mask(mask: torch.Tensor | None, batch: int, kv_len: int) -> torch.Tensor | None:
    """The keys each row of a decode step may read, [B, L] bool, from the step's mask (a static
    cache's or a padded batch's: [B, 1, 1, L] bool, or additive float with -inf / min at masked keys);
    None when there is no mask or it is not of that form."""
    if mask is None or mask.dim() != 4 or tuple(mask.shape[1:3]) != (1, 1) or mask.shape[-1] != kv_len:
        return None
    row = mask[:, 0, 0, :]
    if mask.dtype != torch.bool:
        row = row == 0
    return row.expand(batch, kv_len)


def softmax_scale(query: torch.Tensor, scaling: float | None) -> float:
    """The scale the layer passed, else the default 1 / sqrt(head_dim)."""
    return query.shape[-1] ** -0.5 if scaling is None else scaling


def layer_selection(
    module: torch.nn.Module, q: torch.Tensor, k: torch.Tensor, seq_lens: torch.Tensor | None = None
) -> BlockList:
    """Everything a layer's config asks for between its q/k and the kernel: selector scores, the
    budget rule, horizontal dense rows and retrieval heads. ``seq_lens`` None = no padding."""
    cfg = module.indexer.config
    if not torch.compiler.is_compiling() and forced_blocks_fill_budget(cfg, q.shape[2]):
        name, value = cfg.budget
        warning_once(
            FORCED_BLOCKS_FILL_BUDGET,
            f"sparse_prefill: at {q.shape[2]} tokens the {cfg.sink_blocks} sink + {cfg.local_blocks} local "
            f"blocks of {cfg.block_size} tokens already meet the {name}={value:g} budget of every query "
            f"block, so the {cfg.selector!r} selector adds no block and the layers run as streaming "
            "attention; use smaller blocks or a larger budget for prompts this short",
        )
    lens = seq_lens if seq_lens is not None else torch.full((q.shape[0],), q.shape[2], device=q.device)
    scores = layer_block_scores(module, q, k, lens)
    blocks = select_blocks(scores, cfg, lens, check_lengths=False)  # lens <= q.shape[2] by construction
    if cfg.horizontal_threshold is not None:
        blocks = with_dense_rows(blocks, _horizontal_rows(module, q, k, blocks))
    dense_heads = [h for layer, h in cfg.retrieval_heads if layer == module.layer_idx]
    if dense_heads and k.shape[1] != module.indexer.num_kv_heads:
        raise NotImplementedError(
            "retrieval_heads under tensor parallelism (sharded kv heads) is not supported"
        )
    if dense_heads:
        blocks = with_dense_groups(blocks, dense_heads, k.shape[1])
    return blocks


def _horizontal_rows(
    module: torch.nn.Module, q: torch.Tensor, k: torch.Tensor, blocks: BlockList
) -> torch.Tensor:
    """Query blocks whose probe query keeps less than ``horizontal_threshold`` of its mass: [B, G, nQ]."""
    cfg = module.indexer.config
    probe = ops.row_probe_mass(
        q, k, cfg.block_size, module.scaling, blocks.kv_num_blocks.shape[1], blocks.seq_lens
    )
    kept = (_mean_over_all_heads(module, q, probe) * blocks.to_dense()).sum(-1)
    valid = blocks.kv_num_blocks > 0
    return valid & (kept < cfg.horizontal_threshold)


def last_selection(module: torch.nn.Module) -> BlockList | None:
    """The block list the layer used in its most recent sparse prefill (None if it has not run sparse)."""
    indexer = getattr(module, "indexer", None)
    return getattr(indexer, "last_selection", None)


def kept_density_per_layer(model: torch.nn.Module) -> dict[int, float]:
    """{layer_idx: kept fraction of causal blocks} of each layer's last sparse prefill.

    Duck-typed over ``last_selection`` so it also reads a remote-code model, whose classes are a
    generated copy of this package's.
    """
    return {
        int(getattr(m, "layer_idx", i)): float(m.last_selection.density().mean())
        for i, m in enumerate(model.modules())
        if getattr(m, "last_selection", None) is not None
    }


def kept_density(model: torch.nn.Module) -> float | None:
    """Mean kept fraction over the layers' last sparse prefill (None: no layer ran sparse)."""
    values = list(kept_density_per_layer(model).values())
    return sum(values) / len(values) if values else None


def clear_selections(model: torch.nn.Module) -> None:
    """Forget the layers' last block lists, so the next ``kept_density`` reads only what runs next."""
    for m in model.modules():
        if getattr(m, "last_selection", None) is not None:
            m.last_selection = None


def register() -> None:
    """Register ``"sparse_prefill"`` (attention + mask) with transformers. Idempotent."""
    AttentionInterface.register(ATTENTION_NAME, sparse_prefill_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sparse_prefill_mask)
